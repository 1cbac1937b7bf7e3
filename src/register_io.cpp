#include <pybind11/chrono.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cmath>
#include <memory>
#include <optional>
#include <string>

#include "buffer.h"
#include "io/channel.h"
#include "io/link_channel.h"
#include "io/memory_channel.h"
#include "io/tcp_channel.h"
#include "io/tls_channel.h"
#include "register.h"

namespace py = pybind11;

namespace pie::bindings {

namespace {

std::chrono::milliseconds to_ms(double seconds, const char* field) {
  if (!(seconds > 0.0) || seconds > 1e7) {
    throw std::invalid_argument(std::string(field) + " must be a positive number of seconds");
  }
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000.0 + 0.5));
}

}  // namespace

void register_io(py::module_& m) {
  // Exception family: translators registered later are tried first, so the
  // base class goes first.
  auto base = py::register_exception<ChannelError>(m, "ChannelError", PyExc_ConnectionError);
  base.doc() = "A channel failed; the connection is unusable afterwards.";
  py::register_exception<PeerClosedError>(m, "PeerClosedError", base)
      .doc() = "The peer closed the connection, possibly in the middle of a message.";
  py::register_exception<ChannelTimeoutError>(m, "ChannelTimeoutError",
                                              py::make_tuple(base, py::handle(PyExc_TimeoutError)))
      .doc() = "A read, write, connect or accept made no progress within its deadline.";
  py::register_exception<OversizeMessageError>(m, "OversizeMessageError", base)
      .doc() = "A framed message announced more bytes than the reader allows.";
  py::register_exception<ProtocolError>(m, "ProtocolError", base)
      .doc() = "A framed message had an unexpected type or layout.";
  py::register_exception<TlsError>(m, "TlsError", base)
      .doc() = "TLS failed: handshake, certificate verification, record authentication, or "
               "loading a certificate or key file.";

  py::class_<Channel, std::shared_ptr<Channel>>(m, "Channel", R"doc(
A reliable byte stream between the two parties with exact-size reads and
traffic counters. Blocking calls release the GIL. One thread at a time.)doc")
      .def(
          "send",
          [](Channel& ch, py::handle data) {
            BufferView view(data, false);
            py::gil_scoped_release release;
            ch.send(view.data(), view.size());
          },
          py::arg("data"), "Queue bytes (any C-contiguous buffer); they leave at flush() or recv().")
      .def(
          "recv",
          [](Channel& ch, std::size_t n) {
            std::uint8_t* dst = nullptr;
            py::bytes out = new_bytes(n, &dst);
            {
              py::gil_scoped_release release;
              ch.recv(dst, n);
            }
            return out;
          },
          py::arg("n"), "Receive exactly n bytes.")
      .def(
          "recv_into",
          [](Channel& ch, py::handle buffer) {
            BufferView view(buffer, true);
            py::gil_scoped_release release;
            ch.recv(view.data(), view.size());
          },
          py::arg("buffer"), "Fill a writable buffer completely.")
      .def("flush", &Channel::flush, py::call_guard<py::gil_scoped_release>(),
           "Push buffered bytes to the peer.")
      .def("close", &Channel::close, py::call_guard<py::gil_scoped_release>(),
           "Close this end; the peer's reads then fail with PeerClosedError.")
      .def(
          "send_frame",
          [](Channel& ch, std::uint32_t type, py::handle payload) {
            BufferView view(payload, false);
            py::gil_scoped_release release;
            ch.send_frame(type, view.data(), view.size());
          },
          py::arg("type"), py::arg("payload"), "Send one framed message (type, length, payload) and flush.")
      .def(
          "recv_frame",
          [](Channel& ch, std::uint32_t type, std::size_t max_bytes) {
            std::vector<std::uint8_t> payload;
            {
              py::gil_scoped_release release;
              payload = ch.recv_frame(type, max_bytes);
            }
            return py::bytes(reinterpret_cast<const char*>(payload.data()), payload.size());
          },
          py::arg("type"), py::arg("max_bytes"),
          "Receive one framed message of the given type and at most max_bytes of payload.")
      .def_property_readonly("bytes_sent", [](const Channel& ch) { return ch.stats().bytes_sent; })
      .def_property_readonly("bytes_received",
                             [](const Channel& ch) { return ch.stats().bytes_received; })
      .def_property_readonly("flushes", [](const Channel& ch) { return ch.stats().flushes; },
                             "Flushes that pushed data: the one-way messages this end sent.")
      .def_property_readonly(
          "round_trips", [](const Channel& ch) { return ch.stats().round_trips; },
          "Receives that followed data this end sent: the request/response turns it waited through.")
      .def("reset_stats", &Channel::reset_stats,
           "Zero the counters (the transcript digests keep running).")
      .def(
          "transcript",
          [](const Channel& ch) {
            const ChannelTranscript t = ch.transcript();
            return py::make_tuple(
                py::bytes(reinterpret_cast<const char*>(t.sent.data()), t.sent.size()),
                py::bytes(reinterpret_cast<const char*>(t.received.data()), t.received.size()));
          },
          R"doc(Return (sent_check, received_check): 16-byte Poly1305 tags (fixed
public key) of every byte this end has sent (buffered or not) and
of every byte it has received so far. After the peer flushed and this end
consumed everything, the peer's sent check equals this end's received check.
It detects transport faults, not an attacker (use TLS). The checks continue.)doc")
      .def_property(
          "timeout", [](const Channel& ch) { return static_cast<double>(ch.timeout().count()) / 1000.0; },
          [](Channel& ch, double seconds) { ch.set_timeout(to_ms(seconds, "timeout")); },
          "Seconds a blocking call may wait without progress before ChannelTimeoutError.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](Channel& ch, py::args) { ch.close(); });

  m.def(
      "memory_pair",
      [](std::size_t capacity_bytes, bool transcript_check) {
        auto pair = MemoryChannel::make_pair(capacity_bytes, transcript_check);
        return py::make_tuple(std::shared_ptr<Channel>(std::move(pair.first)),
                              std::shared_ptr<Channel>(std::move(pair.second)));
      },
      py::arg("capacity_bytes") = std::size_t{64} << 20, py::arg("transcript_check") = true,
      "Two connected in-process channel ends; each direction holds at most capacity_bytes in flight.\n"
      "transcript_check=False keeps no transcript check on either end (transcript() is zeros): only\n"
      "for measuring what the check costs.");

  m.def(
      "link_channel",
      [](std::shared_ptr<Channel> inner, double out_bytes_per_second, double out_delay_s,
         double in_bytes_per_second, double in_delay_s, std::size_t send_buffer_bytes) {
        const auto delay = [](double seconds, const char* field) {
          if (!std::isfinite(seconds) || seconds < 0 || seconds > 1e6) {
            throw std::invalid_argument(std::string(field) + " must be a non-negative number of seconds");
          }
          return std::chrono::nanoseconds(static_cast<long long>(std::llround(seconds * 1e9)));
        };
        LinkDirection out{out_bytes_per_second, delay(out_delay_s, "out_delay")};
        LinkDirection in{in_bytes_per_second, delay(in_delay_s, "in_delay")};
        return std::shared_ptr<Channel>(
            std::make_shared<LinkChannel>(std::move(inner), out, in, send_buffer_bytes));
      },
      py::arg("inner"), py::arg("out_bytes_per_second"), py::arg("out_delay"),
      py::arg("in_bytes_per_second"), py::arg("in_delay"), py::arg("send_buffer_bytes"),
      "Wrap a channel end in an emulated link (rates in bytes per second, 0: unlimited; "
      "delays in seconds); the peer's end must be wrapped with the directions mirrored.");

  m.def(
      "tcp_connect",
      [](const std::string& host, std::uint16_t port, double timeout) {
        const auto t = to_ms(timeout, "timeout");
        py::gil_scoped_release release;
        return std::shared_ptr<Channel>(TcpChannel::connect(host, port, t));
      },
      py::arg("host"), py::arg("port"), py::arg("timeout") = 10.0,
      "Connect to host:port, giving up after timeout seconds.");

  py::class_<TcpListener>(m, "TcpListener", "A listening TCP socket.")
      .def(py::init<const std::string&, std::uint16_t, int>(), py::arg("host") = "127.0.0.1",
           py::arg("port") = 0, py::arg("backlog") = 64)
      .def_property_readonly("port", &TcpListener::port)
      .def(
          "accept",
          [](TcpListener& l, double timeout) {
            const auto t = to_ms(timeout, "timeout");
            py::gil_scoped_release release;
            return std::shared_ptr<Channel>(l.accept(t));
          },
          py::arg("timeout") = 60.0, "Wait up to timeout seconds for one connection.")
      .def("close", &TcpListener::close)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](TcpListener& l, py::args) { l.close(); });

  m.def(
      "tls_connect",
      [](const std::string& host, std::uint16_t port, const std::string& ca,
         const std::optional<std::string>& cert, const std::optional<std::string>& key,
         const std::optional<std::string>& server_name, double timeout) {
        const auto t = to_ms(timeout, "timeout");
        TlsClientOptions options;
        options.ca_file = ca;
        options.cert_file = cert.value_or("");
        options.key_file = key.value_or("");
        options.server_name = server_name.value_or("");
        py::gil_scoped_release release;
        return std::shared_ptr<Channel>(TlsChannel::connect(host, port, options, t));
      },
      py::arg("host"), py::arg("port"), py::kw_only(), py::arg("ca"), py::arg("cert") = py::none(),
      py::arg("key") = py::none(), py::arg("server_name") = py::none(), py::arg("timeout") = 10.0,
      "Connect to host:port over TLS 1.3, verifying the server against the CA file and name.");

  py::class_<TlsListener>(m, "TlsListener", "A listening TCP socket whose connections speak TLS 1.3.")
      .def(py::init([](const std::string& host, std::uint16_t port, const std::string& cert,
                       const std::string& key, const std::optional<std::string>& client_ca) {
             TlsServerOptions options;
             options.cert_file = cert;
             options.key_file = key;
             options.client_ca_file = client_ca.value_or("");
             return std::make_unique<TlsListener>(host, port, options);
           }),
           py::arg("host"), py::arg("port"), py::kw_only(), py::arg("cert"), py::arg("key"),
           py::arg("client_ca") = py::none())
      .def_property_readonly("port", &TlsListener::port)
      .def(
          "accept",
          [](TlsListener& l, double timeout) {
            const auto t = to_ms(timeout, "timeout");
            py::gil_scoped_release release;
            return std::shared_ptr<Channel>(l.accept(t));
          },
          py::arg("timeout") = 60.0,
          "Wait up to timeout seconds for one connection; its TLS handshake runs on its first "
          "send or recv.")
      .def("close", &TlsListener::close)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](TlsListener& l, py::args) { l.close(); });
}

}  // namespace pie::bindings
