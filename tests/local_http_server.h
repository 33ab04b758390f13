// A tiny HTTP/1.1 server on 127.0.0.1 for download tests: serves one byte blob at any path (and a redirect at
// /moved), honours "Range: bytes=N-", and can misbehave on demand. One connection at a time, "Connection: close".
// It stops when destroyed, after 200 connections or after 60 seconds, whichever comes first.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace clipdissect::testing {

class LocalHttpServer {
 public:
  enum class Behaviour {
    normal,
    corrupt,       // one byte of the body flipped
    interrupt,     // announces the whole body, sends half of it, closes
    stall,         // announces the whole body, sends kStallBytes of it, then nothing until the server stops
    not_found,     // 404
    ignore_range,  // always 200 with the whole body
  };

  // Few enough that a 1 KiB/s low-speed limit notices the stall at once.
  static constexpr std::size_t kStallBytes = 500;

  explicit LocalHttpServer(std::string body) : body_(std::move(body)) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;  // the OS picks a free port
    socklen_t length = sizeof address;
    if (listener_ < 0 || ::bind(listener_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(listener_, 8) != 0 || ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
      if (listener_ >= 0) ::close(listener_);
      throw std::runtime_error("cannot listen on 127.0.0.1");
    }
    port_ = ntohs(address.sin_port);
    thread_ = std::thread([this] { serve(); });
  }

  ~LocalHttpServer() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  LocalHttpServer(const LocalHttpServer&) = delete;
  LocalHttpServer& operator=(const LocalHttpServer&) = delete;

  void set_behaviour(Behaviour behaviour) { behaviour_ = behaviour; }
  std::string url(std::string_view path = "/blob") const {
    return "http://127.0.0.1:" + std::to_string(port_) + std::string(path);
  }
  // The Range header of each request received so far ("" when absent), in order.
  std::vector<std::string> range_headers() const {
    std::lock_guard lock(mutex_);
    return ranges_;
  }

 private:
  static constexpr int kMaxConnections = 200;
  static constexpr auto kLifetime = std::chrono::seconds(60);
  static constexpr auto kStallLimit = std::chrono::seconds(10);
  static constexpr std::size_t kMaxRequestBytes = 16384;

  bool stopping(std::chrono::steady_clock::time_point deadline) const {
    return stop_ || std::chrono::steady_clock::now() > deadline;
  }

  void serve() {
    const auto deadline = std::chrono::steady_clock::now() + kLifetime;
    for (int connections = 0; connections < kMaxConnections && !stopping(deadline);) {
      pollfd ready{listener_, POLLIN, 0};
      if (::poll(&ready, 1, 50) <= 0) continue;
      const int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) continue;
      ++connections;
      answer(client, deadline);
      ::close(client);
    }
  }

  static std::string read_request(int client) {
    timeval timeout{2, 0};
    ::setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
    std::string request;
    char buffer[1024];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < kMaxRequestBytes) {
      const ssize_t received = ::recv(client, buffer, sizeof buffer, 0);
      if (received <= 0) break;
      request.append(buffer, static_cast<std::size_t>(received));
    }
    return request;
  }

  // The value of the Range header ("bytes=N-"), or "".
  static std::string range_of(const std::string& request) {
    std::string lower = request;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    const std::size_t at = lower.find("\r\nrange: ");
    if (at == std::string::npos) return "";
    const std::size_t start = at + 9;
    return request.substr(start, request.find("\r\n", start) - start);
  }

  static void send_all(int client, std::string_view data) {
    while (!data.empty()) {
      const ssize_t sent = ::send(client, data.data(), data.size(), MSG_NOSIGNAL);
      if (sent <= 0) return;
      data.remove_prefix(static_cast<std::size_t>(sent));
    }
  }

  static std::string headers(std::string_view status, std::size_t length, std::string_view extra = "") {
    return "HTTP/1.1 " + std::string(status) + "\r\nContent-Length: " + std::to_string(length) + "\r\n" +
           std::string(extra) + "Connection: close\r\n\r\n";
  }

  void answer(int client, std::chrono::steady_clock::time_point deadline) {
    const std::string request = read_request(client);
    const std::string range = range_of(request);
    {
      std::lock_guard lock(mutex_);
      ranges_.push_back(range);
    }
    const Behaviour behaviour = behaviour_;
    if (request.starts_with("GET /moved ")) return send_all(client, headers("302 Found", 0, "Location: /blob\r\n"));
    if (behaviour == Behaviour::not_found) return send_all(client, headers("404 Not Found", 9) + "not found");

    std::size_t start = 0;
    const bool ranged = range.starts_with("bytes=") && behaviour != Behaviour::ignore_range;
    if (ranged) start = std::strtoull(range.c_str() + 6, nullptr, 10);
    if (start >= body_.size() && ranged) {
      return send_all(client, headers("416 Range Not Satisfiable", 0,
                                      "Content-Range: bytes */" + std::to_string(body_.size()) + "\r\n"));
    }
    std::string payload = body_.substr(start);
    const std::string content_range = ranged ? "Content-Range: bytes " + std::to_string(start) + "-" +
                                                   std::to_string(body_.size() - 1) + "/" +
                                                   std::to_string(body_.size()) + "\r\n"
                                             : "";
    send_all(client, headers(ranged ? "206 Partial Content" : "200 OK", payload.size(), content_range));
    if (behaviour == Behaviour::corrupt) payload[payload.size() / 2] = static_cast<char>(~payload[payload.size() / 2]);
    const std::string_view body = payload;
    if (behaviour == Behaviour::interrupt) return send_all(client, body.substr(0, body.size() / 2));
    if (behaviour != Behaviour::stall) return send_all(client, body);
    send_all(client, body.substr(0, kStallBytes));
    const auto give_up = std::chrono::steady_clock::now() + kStallLimit;
    while (!stopping(deadline) && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  std::string body_;
  int listener_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<Behaviour> behaviour_{Behaviour::normal};
  mutable std::mutex mutex_;
  std::vector<std::string> ranges_;
  std::thread thread_;
};

}  // namespace clipdissect::testing
