"""`wmpo bench` back ends: what is timed (subjects), the timed rows (rows), repeat statistics and the result
header (measure), and the run that ties them into one JSON document (run). The scripts in bench/ share
measure.py through bench/common.py."""
