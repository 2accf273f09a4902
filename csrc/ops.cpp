// wmpo fused ops: the op schemas (namespace wmpo_C) and the Python module `wmpo._C`. The kernels
// register themselves per op: csrc/cpu/<op>.cpp (CPU, always built) and csrc/cuda/<op>.cu (CUDA);
// the argument checks they share are in csrc/checks.h.
// Every kernel reads bf16/fp16/fp32, accumulates in fp32, writes the input dtype. AdaLN ops: rows
// (x / residual and both outputs) in TX, modulation and y in TM, where TM == TX or TX = fp32 with
// TM = bf16/fp16 (autocast: fp32 residual stream, bf16 linear outputs); see dispatch_adaln in
// adaln_dispatch.h. Other ops: all floating inputs of one call share one dtype.
#include <Python.h>

#include <torch/library.h>

TORCH_LIBRARY(wmpo_C, m) {
  m.def("adaln_modulate(Tensor x, Tensor shift, Tensor scale, int tokens_per_frame, float eps) -> Tensor");
  m.def("adaln_modulate_bwd(Tensor dy, Tensor x, Tensor scale, int tokens_per_frame, float eps) -> (Tensor, Tensor, Tensor)");
  m.def("gated_residual_adaln(Tensor residual, Tensor y, Tensor gate, Tensor shift, Tensor scale, int tokens_per_frame, float eps) -> (Tensor, Tensor)");
  m.def("noisy_context(Tensor x0, Tensor noise, Tensor t, int num_context, float t_context) -> (Tensor, Tensor)");
  m.def("flow_step_(Tensor(a!) x, Tensor v, Tensor? t_now, Tensor? t_next, float t_now_value, float t_next_value, int num_context) -> ()");
  m.def("flow_step_patchify_(Tensor(a!) x, Tensor v, Tensor? t_now, Tensor? t_next, float t_now_value, float t_next_value, int patch) -> Tensor");
  m.def("action_logprob(Tensor logits, Tensor tokens, float temperature) -> (Tensor, Tensor)");
  m.def("action_logprob_bwd(Tensor g_logp, Tensor g_ent, Tensor logits, Tensor tokens, float temperature) -> Tensor");
}

// `import wmpo._C` loads this library (and so runs the registrations above).
static struct PyModuleDef wmpo_c_module = {PyModuleDef_HEAD_INIT, "_C", "wmpo fused ops (torch.ops.wmpo_C)", -1,
                                           nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&wmpo_c_module); }
