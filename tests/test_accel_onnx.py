"""ONNX export of the VAE decoder and the policy's action logits, run with onnxruntime (CPU)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from wmpo.accel.onnx_export import OnnxEngine, export_onnx, export_policy_logits, export_vae_decoder  # noqa: E402

RTOL = 1e-4


def _assert_rel(got: torch.Tensor, want: torch.Tensor, rtol: float = RTOL) -> None:
    """max |got - want| <= rtol * max |want| (relative fp32 tolerance)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    err = (got - want).abs().max().item()
    assert err <= rtol * want.abs().max().item(), f"max err {err:.3g} vs scale {want.abs().max().item():.3g}"


def _tiny_autoencoder():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
        sample_size=16,
    ).eval()


def test_vae_decoder_autoencoderkl(tmp_path):
    vae = _tiny_autoencoder()
    path = export_vae_decoder(vae, tmp_path / "dec.onnx", torch.randn(2, 4, 8, 8), scaling_factor=0.5)
    import onnx

    assert max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")) >= 17
    eng = OnnxEngine(path)
    assert eng.input_names == ["latents"] and eng.output_names == ["frames"]
    z = torch.randn(3, 4, 8, 8)  # batch differs from the export batch: dynamic axis
    got = eng(z)
    with torch.no_grad():
        want = vae.decode(z / 0.5).sample
    assert got.shape == (3, 3, 16, 16)
    _assert_rel(got, want)


@pytest.mark.skipif(importlib.util.find_spec("wmpo.models.vae") is None, reason="wmpo.models.vae not present")
def test_vae_decoder_framevae(tmp_path):
    from wmpo.models.vae import FrameVAE, VAEConfig

    torch.manual_seed(0)
    vae = FrameVAE(VAEConfig(frame_size=16, block_channels=(8, 16), layers_per_block=1, norm_groups=4)).eval()
    vae.scaling_factor.fill_(0.7)
    C, h = vae.latent_channels, vae.latent_size
    eng = OnnxEngine(export_vae_decoder(vae, tmp_path / "fdec.onnx", torch.randn(1, C, h, h)))
    z = torch.randn(5, C, h, h)
    with torch.no_grad():
        want = vae.decode(z)
    _assert_rel(eng(z), want)


@pytest.mark.skipif(importlib.util.find_spec("wmpo.models.policy") is None, reason="wmpo.models.policy not present")
def test_vla_policy_logits(tmp_path):
    from wmpo.models.policy import PolicyConfig, VLAPolicy

    torch.manual_seed(0)
    cfg = PolicyConfig(chunk_len=2, action_dim=3, image_size=32, patch_size=8, hidden_size=32, num_heads=2,
                       vision_layers=1, instr_layers=1, fusion_layers=1, max_instr_len=16)
    policy = VLAPolicy(cfg).eval()
    frames = torch.rand(2, 3, 40, 40) * 2 - 1  # resized to 32 by policy.preprocess
    instr = policy.encode_instructions(["stack the cubes", "pick"])
    eng = OnnxEngine(export_policy_logits(policy, tmp_path / "policy.onnx", frames, instr))
    f3 = torch.rand(3, 3, 40, 40) * 2 - 1
    i3 = policy.encode_instructions(["a", "assemble", "make coffee"])
    with torch.no_grad():
        want = policy.action_logits(f3, i3)
        got = eng(policy.preprocess(f3), i3)
    assert got.shape == (3, 2, 3, 256)
    _assert_rel(got, want)
    # the engine's logits give the same greedy actions as the model
    assert torch.equal(got.argmax(-1), want.argmax(-1))


class _StandInPolicy(torch.nn.Module):
    """A small image + instruction -> [N, K, D, 256] model (conv, embedding, attention, head)."""

    def __init__(self, K=2, D=3, bins=256, width=16):
        super().__init__()
        self.K, self.D, self.bins = K, D, bins
        self.conv = torch.nn.Conv2d(3, width, 4, stride=4)
        self.embed = torch.nn.Embedding(257, width, padding_idx=0)
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.head = torch.nn.Linear(width, K * D * bins)

    def action_logits(self, frames, instr):
        img = self.conv(frames).flatten(2).transpose(1, 2)
        seq = torch.cat([img, self.embed(instr)], 1)
        q, k, v = self.qkv(seq).chunk(3, dim=-1)
        h = (seq + torch.nn.functional.scaled_dot_product_attention(q, k, v)).mean(1)
        return self.head(torch.nn.functional.gelu(h)).view(-1, self.K, self.D, self.bins)


def test_stand_in_policy_logits(tmp_path):
    torch.manual_seed(0)
    pol = _StandInPolicy().eval()
    instr = torch.randint(0, 257, (2, 7))
    eng = OnnxEngine(export_policy_logits(pol, tmp_path / "p.onnx", torch.randn(2, 3, 16, 16), instr))
    f, i = torch.randn(4, 3, 16, 16), torch.randint(0, 257, (4, 7))
    with torch.no_grad():
        want = pol.action_logits(f, i)
    _assert_rel(eng(f, i), want)


def test_engine_bad_input(tmp_path):
    lin = torch.nn.Linear(6, 5)
    path = export_onnx(lin, (torch.randn(2, 6),), tmp_path / "lin.onnx", input_names=["x"], output_names=["y"])
    eng = OnnxEngine(path)
    with pytest.raises(ValueError, match="x"):
        eng(torch.randn(2, 7))  # fixed dim mismatch
    with pytest.raises(ValueError, match="x"):
        eng(torch.randn(2, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="inputs"):
        eng(torch.randn(2, 6), torch.randn(2, 6))
    with pytest.raises(ValueError, match="opset"):
        export_onnx(lin, (torch.randn(2, 6),), tmp_path / "old.onnx", input_names=["x"], output_names=["y"], opset=13)
    with pytest.raises(ValueError, match="path"):
        OnnxEngine(tmp_path / "missing.onnx")


def test_cuda_request_without_provider_falls_back(tmp_path):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed")
    lin = torch.nn.Linear(4, 3)
    eng = OnnxEngine(export_onnx(lin, (torch.randn(2, 4),), tmp_path / "l.onnx", input_names=["x"], output_names=["y"]),
                     device="cpu")
    assert eng.providers == ["CPUExecutionProvider"]
    x = torch.randn(9, 4)
    with torch.no_grad():
        _assert_rel(eng(x), lin(x))


def test_tensorrt_is_optional():
    from wmpo.accel import tensorrt as trt_mod

    assert "UNVERIFIED" in trt_mod.__doc__
    if importlib.util.find_spec("tensorrt") is None:
        assert not trt_mod.tensorrt_available()
        with pytest.raises(RuntimeError, match="tensorrt"):
            trt_mod.TensorRTEngine("missing.plan")
