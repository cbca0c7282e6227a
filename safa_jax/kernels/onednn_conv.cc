// oneDNN convolutions (forward, input gradient, weight gradient) as XLA FFI handlers for JAX on CPU.
//
// Why: XLA's CPU convolutions are 1.3-5x slower than oneDNN's on the shapes of ResNet-32 (docs/benchmarks.md).
// Layouts are JAX's: activations NHWC, kernels HWIO, both float32, dilation 1, one feature group.
// Primitives (and their weight reorders) are built once per shape and kept; weights are reordered into the
// layout oneDNN prefers on each call (they are small), activations stay NHWC, so no activation is ever copied.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& thread_stream() {
  thread_local dnnl::stream stream(cpu_engine());
  return stream;
}

// Shapes of one convolution in oneDNN's logical (NCHW / OIHW) order.
struct ConvShape {
  memory::dims src, weights, dst, strides, padding_l, padding_r;

  std::vector<int64_t> key(int64_t op) const {
    std::vector<int64_t> k{op};
    for (const memory::dims* d : {&src, &weights, &dst, &strides, &padding_l, &padding_r}) {
      k.insert(k.end(), d->begin(), d->end());
    }
    return k;
  }
};

// x: NHWC, w: HWIO, y: NHWC, as JAX stores them.
ConvShape make_shape(ffi::Span<const int64_t> x, ffi::Span<const int64_t> w, ffi::Span<const int64_t> y,
                     ffi::Span<const int64_t> strides, ffi::Span<const int64_t> padding_lo,
                     ffi::Span<const int64_t> padding_hi) {
  return ConvShape{{x[0], x[3], x[1], x[2]},
                   {w[3], w[2], w[0], w[1]},
                   {y[0], y[3], y[1], y[2]},
                   {strides[0], strides[1]},
                   {padding_lo[0], padding_lo[1]},
                   {padding_hi[0], padding_hi[1]}};
}

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

memory::desc nhwc(const memory::dims& dims) { return memory::desc(dims, dt::f32, tag::nhwc); }
// Weights in whatever layout the primitive prefers; it is read back from the primitive descriptor.
memory::desc any_layout(const memory::dims& dims) { return memory::desc(dims, dt::f32, tag::any); }

dnnl::convolution_forward::primitive_desc forward_desc(const ConvShape& s) {
  return dnnl::convolution_forward::primitive_desc(
      cpu_engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, nhwc(s.src),
      any_layout(s.weights), nhwc(s.dst), s.strides, s.padding_l, s.padding_r, user_scratchpad());
}

// The input-gradient and weight-gradient descriptors take the same arguments, hinted by the forward one.
template <typename BackwardDesc>
BackwardDesc backward_desc(const ConvShape& s, const dnnl::convolution_forward::primitive_desc& fwd) {
  return BackwardDesc(cpu_engine(), dnnl::algorithm::convolution_direct, nhwc(s.src), any_layout(s.weights),
                      nhwc(s.dst), s.strides, s.padding_l, s.padding_r, fwd, user_scratchpad());
}

enum Op : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// One cached primitive, with the reorder between the HWIO weights JAX holds and the primitive's weight
// layout: into it for the ops that read weights, out of it for the weight gradient. Both are built once.
struct Entry {
  dnnl::primitive primitive;
  memory::desc weights;  // the primitive's weight (or weight-gradient) layout
  memory::desc scratchpad;
  bool reorder;          // the primitive's weight layout is not HWIO
  dnnl::reorder weight_reorder;
};

std::mutex cache_mutex;
std::map<std::vector<int64_t>, std::shared_ptr<Entry>> cache;

std::shared_ptr<Entry> build(Op op, const ConvShape& s) {
  auto entry = std::make_shared<Entry>();
  auto fwd = forward_desc(s);
  if (op == kForward) {
    entry->primitive = dnnl::convolution_forward(fwd);
    entry->weights = fwd.weights_desc();
    entry->scratchpad = fwd.scratchpad_desc();
  } else if (op == kBackwardData) {
    auto pd = backward_desc<dnnl::convolution_backward_data::primitive_desc>(s, fwd);
    entry->primitive = dnnl::convolution_backward_data(pd);
    entry->weights = pd.weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = backward_desc<dnnl::convolution_backward_weights::primitive_desc>(s, fwd);
    entry->primitive = dnnl::convolution_backward_weights(pd);
    entry->weights = pd.diff_weights_desc();
    entry->scratchpad = pd.scratchpad_desc();
  }
  auto hwio = memory::desc(s.weights, dt::f32, tag::hwio);
  entry->reorder = entry->weights != hwio;
  if (entry->reorder) {
    bool into_primitive = op != kBackwardWeights;
    entry->weight_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(
        cpu_engine(), into_primitive ? hwio : entry->weights, cpu_engine(), into_primitive ? entry->weights : hwio));
  }
  return entry;
}

std::shared_ptr<Entry> lookup(Op op, const ConvShape& s) {
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto& slot = cache[s.key(op)];
  if (!slot) slot = build(op, s);
  return slot;
}

// Runs `op` on the convolution's input-side NHWC buffer `src` (x, or dx for the input gradient), its
// output-side NHWC buffer `dst` (y, or dy for both gradients) and the HWIO `weights` (w, or dw for the
// weight gradient).
ffi::Error run(Op op, const ConvShape& s, void* src, void* weights, void* dst) {
  try {
    auto entry = lookup(op, s);
    auto& engine = cpu_engine();
    auto& stream = thread_stream();
    memory hwio_weights(memory::desc(s.weights, dt::f32, tag::hwio), engine, weights);
    // Uninitialised buffers: zero-filling a multi-megabyte scratchpad on every call costs measurable time.
    std::unique_ptr<uint8_t[]> weight_buffer(new uint8_t[entry->reorder ? entry->weights.get_size() : 0]);
    memory op_weights = entry->reorder ? memory(entry->weights, engine, weight_buffer.get()) : hwio_weights;
    std::unique_ptr<uint8_t[]> scratch(new uint8_t[entry->scratchpad.get_size()]);

    bool reads_weights = op != kBackwardWeights;
    if (entry->reorder && reads_weights) entry->weight_reorder.execute(stream, hwio_weights, op_weights);
    entry->primitive.execute(stream, {
        {op == kBackwardData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC, memory(nhwc(s.src), engine, src)},
        {reads_weights ? DNNL_ARG_WEIGHTS : DNNL_ARG_DIFF_WEIGHTS, op_weights},
        {op == kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST, memory(nhwc(s.dst), engine, dst)},
        {DNNL_ARG_SCRATCHPAD, memory(entry->scratchpad, engine, scratch.get())}});
    if (entry->reorder && !reads_weights) entry->weight_reorder.execute(stream, op_weights, hwio_weights);
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using Ints = ffi::Span<const int64_t>;

ffi::Error forward(F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, Ints strides, Ints padding_lo, Ints padding_hi) {
  auto s = make_shape(x.dimensions(), w.dimensions(), y->dimensions(), strides, padding_lo, padding_hi);
  return run(kForward, s, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error backward_data(F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, Ints strides, Ints padding_lo,
                         Ints padding_hi) {
  auto s = make_shape(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, padding_lo, padding_hi);
  return run(kBackwardData, s, dx->untyped_data(), w.untyped_data(), dy.untyped_data());
}

ffi::Error backward_weights(F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, Ints strides, Ints padding_lo,
                            Ints padding_hi) {
  auto s = make_shape(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, padding_lo, padding_hi);
  return run(kBackwardWeights, s, x.untyped_data(), dw->untyped_data(), dy.untyped_data());
}

}  // namespace

// All three take two float32 arguments and return one, in the order of the functions above.
#define CONV_BINDING                                                                               \
  ffi::Ffi::Bind().Arg<F32>().Arg<F32>().Ret<F32>().Attr<Ints>("strides").Attr<Ints>("padding_lo") \
      .Attr<Ints>("padding_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SafaOnednnConvForward, forward, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SafaOnednnConvBackwardData, backward_data, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SafaOnednnConvBackwardWeights, backward_weights, CONV_BINDING);
