// Number formatting as the reference's outputs print them.
#pragma once

#include <string>

namespace clipdissect {

// str(numpy.float32(x)) (what pandas.to_csv writes): the shortest digits that round-trip the float32,
// positional for 1e-4 <= |x| < 1e16 with at least one decimal ("2.0"), scientific otherwise
// ("1e-05", "1.2345678e+16"); "nan", "inf", "-inf".
std::string format_float32_like_numpy(float value);

}  // namespace clipdissect
