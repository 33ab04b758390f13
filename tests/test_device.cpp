// --device and --precision: parsing, the defaults per model, and the errors of a build or machine without CUDA.
#include <gtest/gtest.h>

#include "cli_runner.h"
#include "clipdissect/device.h"
#include "clipdissect/error.h"
#include "fixtures.h"
#include "test_files.h"

namespace clipdissect {
namespace {

TEST(DeviceNames, ParseCpuCudaAndCudaN) {
  EXPECT_EQ(parse_device("cpu"), (Device{false, 0}));
  EXPECT_EQ(parse_device("cuda"), (Device{true, 0}));
  EXPECT_EQ(parse_device("cuda:3"), (Device{true, 3}));
  EXPECT_EQ(device_name(parse_device("cuda:12")), "cuda:12");
  for (const char* bad : {"gpu", "cuda:", "cuda:-1", "cuda:1x", "CUDA", "cuda:99999999999"}) {
    try {
      parse_device(bad);
      ADD_FAILURE() << bad << " parsed";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("expected cpu, cuda or cuda:N"), std::string::npos) << e.what();
    }
  }
}

TEST(DeviceNames, PrecisionsRoundTrip) {
  for (const Precision p : {Precision::F32, Precision::F16, Precision::BF16})
    EXPECT_EQ(parse_precision(precision_name(p)), p);
  EXPECT_EQ(parse_precision("fp16"), Precision::F16);
  EXPECT_EQ(parse_precision("float16"), std::nullopt);
  EXPECT_EQ(parse_precision(""), std::nullopt);
}

TEST(DeviceBackends, CpuComputesInFp32Only) {
  EXPECT_EQ(make_backend(Device{}, Precision::F32, 1)->name(), "cpu");
  EXPECT_THROW(make_backend(Device{}, Precision::F16, 1), Error);
  EXPECT_THROW(make_backend(Device{}, Precision::BF16, 1), Error);
}

// Without CUDA compiled in, asking for it names the build flag; with it but no GPU, the runtime's reason.
TEST(DeviceBackends, CudaUnavailableIsAClearError) {
  try {
    make_cuda_backend(0, Precision::F32);
    if (!cuda_compiled()) ADD_FAILURE() << "a CUDA backend from a build without CUDA";
    GTEST_SKIP() << "a CUDA device is present: nothing unavailable to report";
  } catch (const Error& e) {
    const std::string message = e.what();
    if (cuda_compiled()) EXPECT_EQ(message.rfind("no CUDA device: ", 0), 0u) << message;
    else EXPECT_NE(message.find("-DCLIPDISSECT_CUDA=ON"), std::string::npos) << message;
  }
}

class DeviceCli : public ::testing::Test {
 protected:
  testing::CliResult run(std::vector<std::string> args) { return testing::run_cli(args, dir_.path()); }
  std::vector<std::string> activations(const std::string& device, const std::string& precision = "") {
    std::vector<std::string> args{"activations", "--target", testing::fixture("models/resnet_basic.pth").string(),
                                  "--layers",    "layer1",   "--images",
                                  testing::fixture("images").string(), "--out", (dir_.path() / "a.safetensors").string(),
                                  "--device",    device};
    if (!precision.empty()) args.insert(args.end(), {"--precision", precision});
    return args;
  }
  testing::TemporaryFolder dir_;
};

TEST_F(DeviceCli, CudaOnABuildWithoutItOrAMachineWithoutAGpuFailsClearly) {
  if (cuda_compiled() && cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  for (const std::string command : {"activations", "embed", "describe"}) {
    std::vector<std::string> args = activations("cuda");
    if (command == "embed")
      args = {"embed", "--clip", testing::fixture("models/clip_vit.pt").string(), "--texts",
              testing::fixture("e2e/concepts.txt").string(), "--out", (dir_.path() / "e.safetensors").string(),
              "--device", "cuda:0"};
    if (command == "describe")
      args = {"describe", "--clip", testing::fixture("models/clip_vit.pt").string(), "--target",
              testing::fixture("models/resnet_basic.pth").string(), "--probe", testing::fixture("images").string(),
              "--concepts", testing::fixture("e2e/concepts.txt").string(), "--layers", "layer1", "--no-cache",
              "--out", (dir_.path() / "out").string(), "--device", "cuda"};
    const testing::CliResult r = run(args);
    EXPECT_EQ(r.status, 1) << command << ": " << r.err;
    EXPECT_NE(r.err.find(cuda_compiled() ? "no CUDA device: " : "rebuild it with -DCLIPDISSECT_CUDA=ON"),
              std::string::npos)
        << command << ": " << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir_.path() / "out" / "descriptions.csv"));
}

TEST_F(DeviceCli, BadDeviceAndPrecisionFlagsAreRejected) {
  testing::CliResult r = run(activations("tpu"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("--device: 'tpu' is not a device"), std::string::npos) << r.err;
  r = run(activations("cpu", "fp64"));
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--precision"), std::string::npos) << r.err;
  r = run(activations("cpu", "fp16"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.err.find("the CPU backend computes in fp32 only"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir_.path() / "a.safetensors"));
}

TEST_F(DeviceCli, ExplicitCpuFp32RunsAsTheDefault) {
  testing::CliResult r = run(activations("cpu", "fp32"));
  ASSERT_EQ(r.status, 0) << r.err;
  const std::string explicit_run = testing::read_file(dir_.path() / "a.safetensors");
  std::vector<std::string> args = activations("cpu");
  args.resize(args.size() - 2);  // no --device at all
  r = run(args);
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(testing::read_file(dir_.path() / "a.safetensors"), explicit_run);
}

}  // namespace
}  // namespace clipdissect
