// libtorch's dynamically quantized linear layer (int8 weights, per output channel; activations
// quantized per batch at run time: `quantized::linear_dynamic`, fbgemm on x86), which tch does not
// bind: its prepacked weights are a TorchScript custom class. Called through the dispatcher, boxed,
// so that no quantization header beyond the public ATen ones is needed. Errors come back as a
// malloc'ed message (free with vae_free_error); tensors as new at::Tensor handles, as tch's own are.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdlib>
#include <cstring>
#include <exception>

struct VaeQuantizedLinear {
  c10::IValue packed;
};

static char* error_message(const std::exception& e) { return strdup(e.what()); }

static c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

extern "C" {

// Prepacks `weight` (float, out × in) as int8 with one symmetric scale per output row, and `bias`
// (float, out; may be null).
char* vae_quantized_linear_new(const at::Tensor* weight, const at::Tensor* bias, VaeQuantizedLinear** out) {
  try {
    at::Tensor w = weight->detach().contiguous();
    at::Tensor scales = (w.abs().amax({1}) / 127.0).clamp_min(1e-12).to(at::kDouble);
    at::Tensor zero_points = at::zeros({w.size(0)}, at::kLong);
    at::Tensor quantized = at::quantize_per_channel(w, scales, zero_points, 0, at::kQInt8);
    static const auto prepack = op("quantized::linear_prepack");
    torch::jit::Stack stack{quantized, bias ? c10::IValue(bias->detach().contiguous()) : c10::IValue()};
    prepack.callBoxed(&stack);
    *out = new VaeQuantizedLinear{std::move(stack.at(0))};
    return nullptr;
  } catch (const std::exception& e) {
    return error_message(e);
  }
}

// y = x·Wᵀ + b with the prepacked weights, followed by ReLU when `relu`.
char* vae_quantized_linear_forward(const VaeQuantizedLinear* layer, const at::Tensor* x, bool relu, at::Tensor** out) {
  try {
    static const auto linear = op("quantized::linear_dynamic");
    static const auto linear_relu = op("quantized::linear_relu_dynamic");
    torch::jit::Stack stack{x->contiguous(), layer->packed, false};
    (relu ? linear_relu : linear).callBoxed(&stack);
    *out = new at::Tensor(stack.at(0).toTensor());
    return nullptr;
  } catch (const std::exception& e) {
    return error_message(e);
  }
}

void vae_quantized_linear_free(VaeQuantizedLinear* layer) { delete layer; }

void vae_free_error(char* message) { free(message); }
}
