// oneDNN convolutions (forward, input gradient, weight gradient) as XLA FFI handlers for JAX on CPU.
//
// Why: XLA's CPU convolutions are 1.3-5x slower than oneDNN's on the shapes of ResNet-32 (docs/benchmarks.md).
// Layouts are JAX's: activations NHWC, kernels HWIO, both float32, dilation 1, one feature group.
// Primitives (and their weight reorders) are built once per shape and kept; weights are reordered into the
// layout oneDNN prefers on each call (they are small), activations stay NHWC, so no activation is ever copied.
//
// Threads: each call splits its batch into one piece per thread of XLA's intra-op pool and runs every piece
// on one thread (oneDNN's OpenMP parallelism is switched off in the threads that call it): the calling
// thread and tasks scheduled on the pool take pieces until none is left. Left to OpenMP, every XLA thread
// that calls oneDNN gets an OpenMP team of its own, whose threads share the cores with XLA's pool: on 2 cores
// the forward convolutions ran 1.3x and the weight reorders 10x slower than alone (docs/benchmarks.md).
//
// Also here, because it is built and loaded with them: SafaKeepInMemory, the no-op behind
// safa_jax/cpu/keep_in_memory.py.
#include <immintrin.h>
#include <omp.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
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

// oneDNN (OpenMP build) reads the thread count when it builds a primitive and when it runs one: one, in every
// thread that does either here.
void use_one_openmp_thread() {
  thread_local bool set = false;
  if (!set) {
    omp_set_num_threads(1);
    set = true;
  }
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

  ConvShape with_batch(int64_t batch) const {
    ConvShape piece = *this;
    piece.src[0] = piece.dst[0] = batch;
    return piece;
  }

  int64_t src_image_size() const { return src[1] * src[2] * src[3]; }
  int64_t dst_image_size() const { return dst[1] * dst[2] * dst[3]; }
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

template <typename Condition>
void spin_until(Condition condition) {
  for (int spins = 0; !condition(); ++spins) {
    if (spins < 4096) _mm_pause(); else sched_yield();  // yield when the cores are oversubscribed
  }
}

// Pieces 0..total-1 of one call, taken by the calling thread and by tasks on XLA's pool. The tasks are
// scheduled first, so a sleeping pool thread wakes while the caller looks up the primitives and reorders the
// weights; they wait for `open`. The caller takes pieces until none is left, then waits only for pieces
// another thread has already started, so the call finishes even when every pool thread is busy elsewhere.
struct Pieces {
  std::thread::id caller = std::this_thread::get_id();
  std::atomic<bool> opened{false};
  std::atomic<int> next{0}, finished{0};
  int total = 0;  // written before `opened`
  std::function<void(int)> run_piece;
  std::mutex error_mutex;
  std::string error;

  void open(int count) {
    total = count;
    opened.store(true, std::memory_order_release);
  }

  void help() {
    // XLA runs a task in the scheduling thread when it has no pool to give it to: the caller does every piece.
    if (std::this_thread::get_id() == caller) return;
    spin_until([this] { return opened.load(std::memory_order_acquire); });
    take_until_none_left();
  }

  void take_until_none_left() {
    use_one_openmp_thread();
    for (int i = next.fetch_add(1); i < total; i = next.fetch_add(1)) {
      try {
        run_piece(i);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(error_mutex);
        error = e.what();
      }
      finished.fetch_add(1, std::memory_order_release);
    }
  }

  void wait_for_started() {
    spin_until([this] { return finished.load(std::memory_order_acquire) >= total; });
  }
};

// Opens a call's pieces when the call leaves early (an error in the set-up): the waiting tasks find none.
struct OpenOnExit {
  Pieces& pieces;
  ~OpenOnExit() { if (!pieces.opened.load()) pieces.open(0); }
};

// Runs `op` on the convolution's input-side NHWC buffer `src` (x, or dx for the input gradient), its
// output-side NHWC buffer `dst` (y, or dy for both gradients) and the HWIO `weights` (w, or dw for the
// weight gradient), the batch split over XLA's pool. Forward and input gradient: each piece reads the same
// reordered weights and writes its own images. Weight gradient: each piece writes a partial gradient, summed
// here.
ffi::Error run(Op op, const ConvShape& s, void* src, void* weights, void* dst, ffi::ThreadPool pool) {
  try {
    use_one_openmp_thread();
    int64_t batch = s.src[0];
    int count = static_cast<int>(std::clamp<int64_t>(pool.num_threads(), 1, batch));
    auto pieces = std::make_shared<Pieces>();
    OpenOnExit open_on_exit{*pieces};
    // A task that starts after the call returned finds no piece left; it only holds `pieces` alive.
    for (int i = 1; i < count; ++i) pool.Schedule([pieces] { pieces->help(); });
    std::vector<int64_t> first(count + 1);  // piece i holds images first[i] .. first[i + 1] - 1
    std::vector<std::shared_ptr<Entry>> entries(count);
    for (int i = 0; i < count; ++i) {
      first[i + 1] = batch * (i + 1) / count;
      entries[i] = lookup(op, s.with_batch(first[i + 1] - first[i]));
    }
    const Entry& layout = *entries[0];  // every piece's primitive has the same weight layout
    auto& engine = cpu_engine();
    memory hwio_weights(memory::desc(s.weights, dt::f32, tag::hwio), engine, weights);
    bool reads_weights = op != kBackwardWeights;
    size_t weight_bytes = layout.weights.get_size();
    // Uninitialised buffers: zero-filling them on every call costs measurable time.
    size_t weight_buffers = reads_weights ? (layout.reorder ? 1 : 0) : count;
    std::unique_ptr<uint8_t[]> weight_buffer(new uint8_t[weight_bytes * weight_buffers]);
    auto piece_weights = [&](int i) {
      if (reads_weights && !layout.reorder) return hwio_weights;
      return memory(layout.weights, engine, weight_buffer.get() + (reads_weights ? 0 : weight_bytes * i));
    };
    if (reads_weights && layout.reorder) {
      memory reordered = piece_weights(0);
      layout.weight_reorder.execute(thread_stream(), hwio_weights, reordered);
      thread_stream().wait();
    }

    pieces->run_piece = [&](int i) {
      const Entry& entry = *entries[i];
      ConvShape piece = s.with_batch(first[i + 1] - first[i]);
      std::unique_ptr<uint8_t[]> scratch(new uint8_t[entry.scratchpad.get_size()]);
      auto& stream = thread_stream();
      entry.primitive.execute(stream, {
          {op == kBackwardData ? DNNL_ARG_DIFF_SRC : DNNL_ARG_SRC,
           memory(nhwc(piece.src), engine, static_cast<float*>(src) + first[i] * s.src_image_size())},
          {reads_weights ? DNNL_ARG_WEIGHTS : DNNL_ARG_DIFF_WEIGHTS, piece_weights(i)},
          {op == kForward ? DNNL_ARG_DST : DNNL_ARG_DIFF_DST,
           memory(nhwc(piece.dst), engine, static_cast<float*>(dst) + first[i] * s.dst_image_size())},
          {DNNL_ARG_SCRATCHPAD, memory(entry.scratchpad, engine, scratch.get())}});
      stream.wait();
    };
    pieces->open(count);
    pieces->take_until_none_left();
    pieces->wait_for_started();
    if (!pieces->error.empty()) throw std::runtime_error(pieces->error);

    if (!reads_weights) {
      float* sum = reinterpret_cast<float*>(weight_buffer.get());
      for (int i = 1; i < count; ++i) {
        const float* part = reinterpret_cast<const float*>(weight_buffer.get() + weight_bytes * i);
        for (size_t k = 0; k < weight_bytes / sizeof(float); ++k) sum[k] += part[k];
      }
      if (layout.reorder) {
        memory summed = piece_weights(0);
        layout.weight_reorder.execute(thread_stream(), summed, hwio_weights);
        thread_stream().wait();
      } else {
        std::memcpy(weights, sum, weight_bytes);
      }
    }
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

using F32 = ffi::Buffer<ffi::F32>;
using Ints = ffi::Span<const int64_t>;

ffi::Error forward(ffi::ThreadPool pool, F32 x, F32 w, ffi::ResultBuffer<ffi::F32> y, Ints strides,
                   Ints padding_lo, Ints padding_hi) {
  auto s = make_shape(x.dimensions(), w.dimensions(), y->dimensions(), strides, padding_lo, padding_hi);
  return run(kForward, s, x.untyped_data(), w.untyped_data(), y->untyped_data(), pool);
}

ffi::Error backward_data(ffi::ThreadPool pool, F32 dy, F32 w, ffi::ResultBuffer<ffi::F32> dx, Ints strides,
                         Ints padding_lo, Ints padding_hi) {
  auto s = make_shape(dx->dimensions(), w.dimensions(), dy.dimensions(), strides, padding_lo, padding_hi);
  return run(kBackwardData, s, dx->untyped_data(), w.untyped_data(), dy.untyped_data(), pool);
}

ffi::Error backward_weights(ffi::ThreadPool pool, F32 x, F32 dy, ffi::ResultBuffer<ffi::F32> dw, Ints strides,
                            Ints padding_lo, Ints padding_hi) {
  auto s = make_shape(x.dimensions(), dw->dimensions(), dy.dimensions(), strides, padding_lo, padding_hi);
  return run(kBackwardWeights, s, x.untyped_data(), dw->untyped_data(), dy.untyped_data(), pool);
}

// Returns its argument. XLA passes the argument's buffer as the result (input_output_aliases), so this moves
// no data; it copies only if XLA hands it two buffers.
ffi::Error keep_in_memory(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.untyped_data() != y->untyped_data()) std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  return ffi::Error::Success();
}

}  // namespace

// The three convolution handlers take XLA's intra-op pool and two float32 arguments and return one, in the order of
// the functions above.
#define CONV_BINDING                                                                                  \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<F32>().Arg<F32>().Ret<F32>().Attr<Ints>("strides")     \
      .Attr<Ints>("padding_lo").Attr<Ints>("padding_hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(SafaOnednnConvForward, forward, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SafaOnednnConvBackwardData, backward_data, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SafaOnednnConvBackwardWeights, backward_weights, CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(SafaKeepInMemory, keep_in_memory,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
