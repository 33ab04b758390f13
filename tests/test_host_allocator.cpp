#include <cstdint>
#include <memory>

#include <gtest/gtest.h>

#include "engine/block_pool.h"
#include "engine/host_allocator.h"

namespace clipdissect {
namespace {

std::uintptr_t address(const std::shared_ptr<void>& p) { return reinterpret_cast<std::uintptr_t>(p.get()); }

TEST(BlockPool, SizeClassesRoundSmallTo512BytesAndLargeTo2MiB) {
  EXPECT_EQ(allocation_size(1), 512u);
  EXPECT_EQ(allocation_size(513), 1024u);
  EXPECT_EQ(allocation_size((1u << 20) - 1), 1u << 20);
  EXPECT_EQ(allocation_size(1u << 20), 2u << 20);
  EXPECT_EQ(allocation_size((2u << 20) + 1), 4u << 20);
}

TEST(BlockPool, TakesTheSmallestBlockUpToTwiceTheRequest) {
  BlockPool<int> pool;
  EXPECT_TRUE(pool.put(4096, 1));
  EXPECT_TRUE(pool.put(1024, 2));
  EXPECT_FALSE(pool.take(511).has_value());  // 1024 fits, but would waste more than half of it
  EXPECT_EQ(pool.take(512), 2);
  EXPECT_FALSE(pool.take(1024).has_value());  // 4096 is more than twice the request
  EXPECT_EQ(pool.take(2048), 1);
  EXPECT_FALSE(pool.take(2048).has_value());
}

TEST(BlockPool, RefusesBlocksBeyondItsLimitAndDrainsEverything) {
  BlockPool<int> pool;
  EXPECT_TRUE(pool.put(600, 1, 1000));
  EXPECT_FALSE(pool.put(600, 2, 1000));
  EXPECT_TRUE(pool.put(400, 3, 1000));
  EXPECT_EQ(pool.drain().size(), 2u);
  EXPECT_TRUE(pool.put(1000, 4, 1000));  // the drained bytes no longer count
}

TEST(HostAllocator, ReusesFreedBlocksOfTheSameSizeClass) {
  auto allocator = std::make_shared<HostAllocator>(std::size_t{64} << 20);
  std::uintptr_t first = 0;
  {
    auto block = allocator->allocate(3u << 20);
    first = address(block);
    EXPECT_EQ(first % (2u << 20), 0u) << "large blocks are aligned for huge pages";
  }
  auto again = allocator->allocate((3u << 20) + 100);  // the same 4 MiB class
  EXPECT_EQ(address(again), first);
  auto other = allocator->allocate(3u << 20);  // the pooled block is taken: a new one
  EXPECT_NE(address(other), first);
  auto small = allocator->allocate(100);
  EXPECT_EQ(address(small) % 64, 0u);
}

// Checked by the sanitizer pass: a block freed with its allocator, or a pool freed under a live block, is a
// use after free there.
TEST(HostAllocator, BlocksOutliveTheirAllocator) {
  auto allocator = std::make_shared<HostAllocator>(std::size_t{1} << 20);
  auto big = allocator->allocate(4u << 20);  // over the cache limit: freed, not pooled, when dropped
  auto kept = allocator->allocate(1000);
  allocator.reset();  // blocks keep their allocator alive
  static_cast<char*>(big.get())[(4u << 20) - 1] = 1;
  static_cast<char*>(kept.get())[999] = 1;
}

}  // namespace
}  // namespace clipdissect
