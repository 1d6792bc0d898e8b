// A C++ asynchronous KServe v2 load generator: batch-1 ModelInfer calls, a fixed number in
// flight, spread over several channels; prints requests/s and latency percentiles.
//
//   benchmarks/loadgen/build.sh            # -> build/loadgen (needs libgrpc++-dev, protobuf-compiler-grpc)
//   build/loadgen 127.0.0.1:8500 lenet 1,28,28 logits 32 5 2
//
// Why it exists: a Python gRPC client spends ~175 us of CPU per call, as much as the server, so on
// a 2-core machine a Python client measures itself as much as the server. This client costs a
// small fraction of that (perf_analyzer's role; its wheels need glibc 2.38, this machine has 2.36).
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "inference/grpc_service.grpc.pb.h"

using Clock = std::chrono::steady_clock;
using inference::GRPCInferenceService;
using inference::ModelInferRequest;
using inference::ModelInferResponse;

struct Call {
  grpc::ClientContext ctx;
  ModelInferResponse reply;
  grpc::Status status;
  std::unique_ptr<grpc::ClientAsyncResponseReader<ModelInferResponse>> rpc;
  Clock::time_point start;
  size_t channel = 0;
};

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: %s ADDRESS MODEL C,H,W OUTPUT CONCURRENCY SECONDS CHANNELS [WARMUP_S]\n", argv[0]);
    return 2;
  }
  const std::string address = argv[1], model = argv[2], output = argv[4];
  std::vector<int64_t> shape{1};
  std::stringstream dims(argv[3]);
  for (std::string d; std::getline(dims, d, ',');) shape.push_back(std::atoll(d.c_str()));
  const int concurrency = std::atoi(argv[5]);
  const double seconds = std::atof(argv[6]), warmup = argc > 8 ? std::atof(argv[8]) : 0.5;
  const size_t n_channels = std::max(1, std::atoi(argv[7]));

  ModelInferRequest request;
  request.set_model_name(model);
  auto* input = request.add_inputs();
  input->set_name("input");
  input->set_datatype("FP32");
  int64_t elements = 1;
  for (int64_t d : shape) { input->add_shape(d); elements *= d; }
  request.add_outputs()->set_name(output);
  std::string raw(elements * sizeof(float), '\0');  // zeros: the compute does not depend on values
  request.add_raw_input_contents(raw);

  std::vector<std::unique_ptr<GRPCInferenceService::Stub>> stubs;
  for (size_t i = 0; i < n_channels; ++i) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // one connection per channel
    args.SetInt("glassbox.loadgen.channel", static_cast<int>(i));
    args.SetMaxReceiveMessageSize(64 << 20);
    stubs.push_back(GRPCInferenceService::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args)));
  }

  grpc::CompletionQueue cq;
  auto issue = [&](size_t channel) {
    auto* call = new Call;
    call->channel = channel;
    call->start = Clock::now();
    call->rpc = stubs[channel]->PrepareAsyncModelInfer(&call->ctx, request, &cq);
    call->rpc->StartCall();
    call->rpc->Finish(&call->reply, &call->status, call);
  };
  const auto t0 = Clock::now();
  const auto measure_from = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(warmup));
  const auto stop = measure_from + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  for (int i = 0; i < concurrency; ++i) issue(i % n_channels);

  std::vector<double> latency_ms;
  latency_ms.reserve(1 << 20);
  long errors = 0, in_flight = concurrency;
  std::string first_error;
  void* tag;
  bool ok;
  while (in_flight > 0 && cq.Next(&tag, &ok)) {
    std::unique_ptr<Call> call(static_cast<Call*>(tag));
    const auto now = Clock::now();
    --in_flight;
    if (!ok || !call->status.ok()) {
      if (errors++ == 0) first_error = call->status.error_message();
    } else if (call->start >= measure_from && now <= stop) {
      latency_ms.push_back(std::chrono::duration<double, std::milli>(now - call->start).count());
    }
    if (now < stop && errors < 100) { issue(call->channel); ++in_flight; }
  }
  if (errors) std::fprintf(stderr, "%ld failed calls, first: %s\n", errors, first_error.c_str());
  if (latency_ms.empty()) { std::fprintf(stderr, "no successful calls\n"); return 1; }
  std::sort(latency_ms.begin(), latency_ms.end());
  auto pct = [&](double p) { return latency_ms[std::min(latency_ms.size() - 1, static_cast<size_t>(p * latency_ms.size()))]; };
  std::printf("%.0f %.3f %.3f %ld\n", latency_ms.size() / seconds, pct(0.50), pct(0.99), errors);
  return errors ? 1 : 0;
}
