"""A machine without a route out, for tests/test_tfds.py: put this folder on PYTHONPATH.

GUARD_DNS=fail: every name lookup fails. GUARD_DNS=hang: names resolve to an unroutable address
and every outward connection hangs (for the socket's timeout, forever without one), as behind a
firewall that drops packets. Loopback connections work.
"""

import os
import socket
import time

_connect = socket.socket.connect


def _no_dns(*args, **kwargs):
  raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (socket guard)")


def _unroutable(host, port, *args, **kwargs):
  return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.255.255.1", port))]


def _hang(self, address, *args, **kwargs):
  if isinstance(address, tuple) and address[0] in ("127.0.0.1", "localhost", "::1"):
    return _connect(self, address, *args, **kwargs)
  timeout = self.gettimeout()
  time.sleep(3600 if timeout is None else timeout)
  raise socket.timeout("timed out (socket guard)")


if os.environ.get("GUARD_DNS"):
  socket.getaddrinfo = _no_dns if os.environ["GUARD_DNS"] == "fail" else _unroutable
  socket.socket.connect = _hang
