#include <cmath>

#include <gtest/gtest.h>

#include "report/float_format.h"

namespace clipdissect {
namespace {

// Expected strings printed by numpy 1.24's str(numpy.float32(x)) for the same inputs.
TEST(FloatFormat, MatchesNumpyFloat32Str) {
  const std::pair<float, const char*> cases[] = {
      {1.0578003f, "1.0578003"},     {2.0f, "2.0"},           {1e-5f, "1e-05"},         {0.0001f, "1e-04"},
      {0.00012345f, "0.00012345"},   {123456790.0f, "123456790.0"}, {1e16f, "1e+16"}, {1.5e16f, "1.5e+16"},
      {-0.0f, "-0.0"},               {-74.127266f, "-74.127266"}, {1e22f, "1e+22"},     {3.4e38f, "3.4e+38"},
      {1.17e-38f, "1.17e-38"},       {0.1f, "0.1"},           {100.0f, "100.0"},        {9.999999e-05f, "9.999999e-05"},
  };
  for (const auto& [value, expected] : cases) EXPECT_EQ(format_float32_like_numpy(value), expected) << expected;
  EXPECT_EQ(format_float32_like_numpy(NAN), "nan");
  EXPECT_EQ(format_float32_like_numpy(-INFINITY), "-inf");
}

}  // namespace
}  // namespace clipdissect
