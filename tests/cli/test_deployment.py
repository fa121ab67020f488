"""docs/deployment.md and contrib/ as an operator uses them: the systemd units
verified by systemd itself and their sandbox tried on a real pods; nginx and Caddy
started with the shipped configurations in front of a real pods, the SDK over
HTTPS; the PostgreSQL recipe run as written, with a role that is no superuser.

Each needs a program (systemd-analyze, nginx, caddy, openssl, psql): absent, the
test is skipped with the reason, except under CI=true, where it fails (.ci/run
installs them)."""

import ctypes
import ctypes.util
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import dbtools
import httpx
import pytest
from agentmail import AgentMail
from agentmail.environment import AgentMailEnvironment
from agentmail.errors import NotFoundError
from live import APP, Server, run_app

ROOT = Path(__file__).resolve().parent.parent.parent
UNITS = ROOT / "contrib" / "systemd"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
TOO_LARGE_BODY = {"name": "PayloadTooLargeError", "message": "Request body is larger than 64 KiB.",
                  "code": "payload_too_large"}  # pods' own 413 (pods/errors.py), which the proxies repeat
BODY_LIMIT = 64 * 1024

pytestmark = pytest.mark.live


def missing(reason: str):
    """Skip for want of a program or library, saying which; under CI=true, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def tool(name: str, package: str) -> str:
    """The path of program ``name``, or skip (fail under CI=true) saying which
    Debian package has it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        missing(f"{name} is not installed (Debian: apt-get install {package}; .ci/run installs it)")
    return path


def run(command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, **kwargs)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def code_blocks(text: str, language: str = "sh") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def section(text: str, heading: str) -> str:
    """The body of the markdown section whose heading starts with ``heading``."""
    m = re.search(rf"^(#+) {re.escape(heading)}.*?$(.*?)(?=^#{{1,2}} |\Z)", text, re.MULTILINE | re.DOTALL)
    assert m, f"no section {heading!r}"
    return m.group(2)


def directives(unit: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in unit.read_text().splitlines()
            if "=" in line and not line.startswith(("#", ";", "["))]


# -- systemd ------------------------------------------------------------------------


def unit_paths() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))


@pytest.fixture(scope="module")
def system_root(tmp_path_factory) -> Path:
    """A file system root for ``systemd-analyze --root``: the system's own unit
    files (the targets the units name), the units installed as docs/deployment.md
    installs them, and a stand-in for each program an ExecStart runs, so that verify
    checks that the command exists at that path, not on this machine."""
    tool("systemd-analyze", "systemd")
    root = tmp_path_factory.mktemp("root")
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        pytest.fail(f"{system_units} is missing: systemd-analyze cannot resolve the units' targets")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    installed = root / "etc/systemd/system"
    installed.mkdir(parents=True)
    for unit in unit_paths():
        shutil.copy(unit, installed)
        for key, value in directives(unit):
            if key == "ExecStart":
                program = root / value.lstrip("@-:+!").split()[0].lstrip("/")
                program.parent.mkdir(parents=True, exist_ok=True)
                program.write_text("#!/bin/sh\n")
                program.chmod(0o755)
    return root


@pytest.mark.parametrize("unit", [p.name for p in unit_paths()])
def test_systemd_analyze_verify_passes_on_every_unit(system_root, unit):
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={system_root}",
                             f"/etc/systemd/system/{unit}"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_verify_fails_without_the_program_so_it_checks_the_path(system_root, tmp_path):
    """The stand-ins matter: without /opt/pods/bin/pods in the root, verify refuses the unit."""
    root = tmp_path / "root"
    shutil.copytree(system_root, root, symlinks=True, ignore=shutil.ignore_patterns("opt"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}",
                             "/etc/systemd/system/pods.service"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "/opt/pods/bin/pods is not executable" in result.stderr


def test_the_units_run_the_command_the_install_steps_create():
    steps = code_blocks(section(DEPLOYMENT.read_text(), "1. Install"))[0]
    venv = re.search(r"^/usr/bin/python3 -m venv (\S+)$", steps, re.MULTILINE).group(1)
    assert re.search(rf"^{re.escape(venv)}/bin/pip install '\.\[postgres\]'$", steps, re.MULTILINE)
    command = f"{venv}/bin/pods"
    assert dict(directives(UNITS / "pods.service"))["ExecStart"] == command
    assert f"exec {command} backup " in dict(directives(UNITS / "pods-backup.service"))["ExecStart"]
    # and the README points at these steps, with no unit of its own
    readme = (ROOT / "README.md").read_text()
    assert "docs/deployment.md" in readme and ".venv/bin/python /opt/pods/app.py" not in readme


def test_the_service_unit_keeps_secrets_out_and_state_in():
    unit = UNITS / "pods.service"
    settings = directives(unit)
    values = {key: value for key, value in settings}
    assert values["EnvironmentFile"] == "/etc/pods/pods.env" and values["User"] == "pods"
    assert values["StateDirectory"] == "pods" and values["WorkingDirectory"] == "/var/lib/pods"
    assert "PODS_DB=/var/lib/pods/pods.db" in values["Environment"].split()
    assert not any(name in values["Environment"] for name in ("PODS_API_KEY", "postgresql://"))
    # EnvironmentFile= after Environment=: the file's values win (systemd reads them later)
    keys = [key for key, _ in settings]
    assert keys.index("Environment") < keys.index("EnvironmentFile")
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                    "PrivateDevices=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
                    "SystemCallFilter=@system-service", "UMask=0077", "After=network-online.target",
                    "Wants=network-online.target", "MemoryDenyWriteExecute=yes"):
        assert setting in unit.read_text().splitlines(), setting
    # The install steps make the env file root-only before anything is written to it.
    steps = DEPLOYMENT.read_text()
    assert "install -m 0600 /dev/null /etc/pods/pods.env" in steps and "install -d -m 0700 /etc/pods" in steps


def test_the_security_exposure_is_what_the_deployment_guide_says(system_root):
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={system_root}",
                             "pods.service"], capture_output=True, text=True, timeout=60)
    exposure = re.search(r"Overall exposure level for pods\.service: (\d+\.\d)", result.stdout + result.stderr)
    assert exposure, result.stdout + result.stderr
    assert float(exposure.group(1)) <= 1.2
    assert f"exposure **{exposure.group(1)} (OK)**" in DEPLOYMENT.read_text()


# -- the sandbox, tried on a real pods ------------------------------------------------


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own system-call groups (``systemd-analyze syscall-filter``)."""
    out = run(["systemd-analyze", "syscall-filter"]).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif current is not None and line.strip() and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(name: str, groups: dict) -> set[str]:
    if not name.startswith("@"):
        return {name}
    return set().union(*(expand(member, groups) for member in groups[name]))


SANDBOX = r"""
import ctypes, os, sys
allowed, families, argv = sys.argv[1].split(","), [int(f) for f in sys.argv[2].split(",")], sys.argv[3:]
lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]


class Cmp(ctypes.Structure):  # struct scmp_arg_cmp
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1  # SCMP_ACT_ALLOW, SCMP_ACT_ERRNO(EPERM): SystemCallErrorNumber=EPERM
ctx = lib.seccomp_init(EPERM)
for name in allowed:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:
        continue  # not a system call of this architecture
    if name == "socket":  # RestrictAddressFamilies=: socket() for these families only
        for family in families:
            cmp = Cmp(0, 4, family, 0)  # SCMP_CMP_EQ on the first argument
            assert lib.seccomp_rule_add_array(ctx, ALLOW, number, 1, ctypes.byref(cmp)) == 0
    else:
        assert lib.seccomp_rule_add_array(ctx, ALLOW, number, 0, None) == 0, name
assert lib.seccomp_load(ctx) == 0
# MemoryDenyWriteExecute=: the kernel's own rule (PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN), kept across exec.
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(65, 1, 0, 0, 0) == 0, os.strerror(ctypes.get_errno())
os.execv(argv[0], argv)
"""


def test_pods_serves_under_the_units_system_call_filter_families_and_w_xor_x(tmp_path):
    """systemd cannot run here (it is not PID 1), so pods.service's filters are built the
    way systemd builds them: the allow list of @system-service less @privileged, from
    systemd's own groups, every other call EPERM; socket() for AF_UNIX, AF_INET and
    AF_INET6 only; no memory both writable and executable. Then pods serves with two
    workers, stores a pod and stops cleanly."""
    tool("systemd-analyze", "systemd")
    libseccomp = ctypes.util.find_library("seccomp")
    if libseccomp is None:
        missing("libseccomp is not installed (Debian: apt-get install libseccomp2; .ci/run installs it)")
    probe = subprocess.run([sys.executable, "-c", "import ctypes; print(ctypes.CDLL(None).prctl(66, 0, 0, 0, 0))"],
                           capture_output=True, text=True)  # PR_GET_MDWE: -1 where the kernel lacks it
    if probe.stdout.strip() == "-1":  # the kernel's, not a package: skipped under CI=true too
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3 or later) to stand in for MemoryDenyWriteExecute")
    values = [value for key, value in directives(UNITS / "pods.service") if key == "SystemCallFilter"]
    assert values == ["@system-service", "~@privileged"]
    groups = syscall_groups()
    allowed = expand("@system-service", groups) - expand("@privileged", groups)
    families = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}
    named = dict(directives(UNITS / "pods.service"))["RestrictAddressFamilies"].split()
    wrapper = tmp_path / "sandbox.py"
    wrapper.write_text(SANDBOX.replace("LIBSECCOMP", repr(libseccomp)))
    command = [sys.executable, wrapper, ",".join(sorted(allowed)), ",".join(str(int(families[f])) for f in named),
               sys.executable, APP]

    # The filter bites: a call outside it fails with EPERM, and so does a packet socket.
    refused = subprocess.run([sys.executable, wrapper, ",".join(sorted(allowed)), "1,2,10", sys.executable, "-c",
                              "import os, socket\n"
                              "try:\n    os.chroot('/')\nexcept PermissionError: print('chroot refused')\n"
                              "try:\n    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n"
                              "except PermissionError: print('netlink refused')\n"],
                             capture_output=True, text=True, timeout=60)
    assert refused.stdout.split("\n")[:2] == ["chroot refused", "netlink refused"], refused.stderr

    server = Server(tmp_path / "pods.db", "--workers", "2", command=command, workdir=tmp_path)
    try:
        status = Path(f"/proc/{server.proc.pid}/status").read_text()
        assert re.search(r"^Seccomp:\s+2$", status, re.MULTILINE), status  # filtered, as systemd would
        headers = {"Authorization": f"Bearer {server.bootstrap_token}"}
        created = httpx.post(server.url + "/agent/v0/pods", json={"client_id": "sandboxed"}, headers=headers)
        assert created.status_code == 200, created.text
        assert httpx.get(server.url + "/agent/v0/pods", headers=headers).json()["count"] == 1
    finally:
        assert server.stop() == 0, server.stderr
    assert "Traceback" not in server.stderr and "EPERM" not in server.stderr and "Operation not permitted" \
        not in server.stderr, server.stderr
    assert dbtools.query(str(tmp_path / "pods.db"), "SELECT client_id FROM pod") == [("sandboxed",)]


# -- TLS in front: nginx and Caddy ---------------------------------------------------------


class Certificate:
    """A test CA and a certificate it signed for 127.0.0.1 and localhost, made with openssl."""

    def __init__(self, folder: Path):
        openssl = tool("openssl", "openssl")
        folder.mkdir()
        self.ca, ca_key = folder / "ca.pem", folder / "ca.key"
        self.cert, self.key = folder / "server.pem", folder / "server.key"
        curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run([openssl, "req", "-x509", *curve, "-keyout", ca_key, "-out", self.ca, "-days", "2",
             "-subj", "/CN=pods test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        csr, extensions = folder / "server.csr", folder / "server.ext"
        run([openssl, "req", *curve, "-keyout", self.key, "-out", csr, "-subj", "/CN=localhost"])
        extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                              "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        run([openssl, "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", ca_key, "-CAcreateserial",
             "-out", self.cert, "-days", "2", "-extfile", extensions])

    def client(self, **kwargs) -> httpx.Client:
        """An httpx client that trusts this CA only, connecting from 127.0.0.2: an
        address other than the proxy's own, so the log shows whose it is."""
        context = ssl.create_default_context(cafile=str(self.ca))
        transport = httpx.HTTPTransport(verify=context, local_address="127.0.0.2")
        return httpx.Client(transport=transport, timeout=30, **kwargs)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Certificate:
    return Certificate(tmp_path_factory.mktemp("tls") / "ca")


@pytest.fixture
def pods_behind_proxy(tmp_path):
    """A real pods that trusts the proxy on 127.0.0.1 for X-Forwarded-For."""
    server = Server(tmp_path / "pods.db", "--trusted-proxy", "127.0.0.1", workdir=tmp_path)
    yield server
    assert server.stop() == 0


def rewritten(text: str, replacements: dict[str, str]) -> str:
    """The shipped configuration with test ports and paths: each piece replaced must
    be there, so a change to the shipped file cannot leave this test behind."""
    for old, new in replacements.items():
        assert old in text, f"{old!r} is no longer in the shipped configuration"
        text = text.replace(old, new)
    return text


def wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the proxy exited {proc.returncode}: {log.read_text() if log.exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail("the proxy did not listen")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


@pytest.fixture
def nginx(tmp_path, certificate, pods_behind_proxy):
    """nginx started with contrib/nginx/pods.conf, in front of ``pods_behind_proxy``:
    yields the HTTPS port and the plain HTTP port."""
    binary = tool("nginx", "nginx-light")
    https, http = free_port(), free_port()
    conf = tmp_path / "nginx"
    conf.mkdir()
    shipped = (ROOT / "contrib/nginx/pods.conf").read_text()
    (conf / "pods.conf").write_text(rewritten(shipped, {
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "listen 80;": f"listen 127.0.0.1:{http};",
        "listen [::]:80;": "",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{pods_behind_proxy.port};",
        "/etc/ssl/pods/fullchain.pem": str(certificate.cert),
        "/etc/ssl/pods/privkey.pem": str(certificate.key),
    }))
    user = "user root;" if os.geteuid() == 0 else ""  # its workers write body buffers into this folder
    (conf / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {conf}/nginx.pid;
error_log {conf}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {conf}/access.log;
    client_body_temp_path {conf}/body;
    proxy_temp_path {conf}/proxy;
    fastcgi_temp_path {conf}/fastcgi;
    uwsgi_temp_path {conf}/uwsgi;
    scgi_temp_path {conf}/scgi;
    include {conf}/pods.conf;
}}
""")
    run([binary, "-t", "-p", conf, "-c", conf / "nginx.conf", "-e", conf / "error.log"])
    proc = subprocess.Popen([binary, "-p", conf, "-c", conf / "nginx.conf", "-e", conf / "error.log"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(https, proc, conf / "error.log")
        yield https, http
    finally:
        stop(proc)


@pytest.fixture
def caddy(tmp_path, certificate, pods_behind_proxy):
    """Caddy started with contrib/caddy/Caddyfile, in front of ``pods_behind_proxy``."""
    binary = tool("caddy", "caddy")
    https = free_port()
    folder = tmp_path / "caddy"
    folder.mkdir()
    shipped = (ROOT / "contrib/caddy/Caddyfile").read_text()
    config = "{\n\tadmin off\n\tauto_https disable_redirects\n}\n" + rewritten(shipped, {
        "pods.example.com {": f"https://127.0.0.1:{https} {{",
        "#   tls /etc/ssl/pods/fullchain.pem /etc/ssl/pods/privkey.pem": f"tls {certificate.cert} {certificate.key}",
        "reverse_proxy 127.0.0.1:8080 {": f"reverse_proxy 127.0.0.1:{pods_behind_proxy.port} {{",
    })
    (folder / "Caddyfile").write_text(config)
    env = {**os.environ, "HOME": str(folder), "XDG_DATA_HOME": str(folder / "data"),
           "XDG_CONFIG_HOME": str(folder / "config")}
    run([binary, "validate", "--adapter", "caddyfile", "--config", folder / "Caddyfile"], env=env)
    log = folder / "caddy.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([binary, "run", "--adapter", "caddyfile", "--config", folder / "Caddyfile"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for_port(https, proc, log)
        yield https, None
    finally:
        stop(proc)


@pytest.fixture(params=["nginx", "caddy"])
def proxy(request):
    """(name, HTTPS port, plain HTTP port or None) of a proxy in front of pods."""
    https, http = request.getfixturevalue(request.param)
    return request.param, https, http


def access_lines(server: Server, request_id: str, count: int = 1) -> list[str]:
    """pods' access lines of requests with this id, once ``count`` of them are
    written (the log is written by a thread of its own), or all there are after 5 s."""
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in server.stderr.splitlines() if f"request_id={request_id} " in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_the_sdk_works_over_https_through_the_proxy_and_pods_logs_the_real_client(
        proxy, certificate, pods_behind_proxy):
    name, https, _ = proxy
    environment = AgentMailEnvironment(http=f"https://127.0.0.1:{https}/agent", websockets="wss://unused")
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Request-Id": f"{name}-sdk"}
    with certificate.client(headers=forged) as http:
        client = AgentMail(api_key=pods_behind_proxy.bootstrap_token, environment=environment, httpx_client=http)
        pod = client.pods.create(name="Behind TLS", client_id="tls-1")
        assert [p.pod_id for p in client.pods.list().pods] == [pod.pod_id]
        assert client.pods.delete(pod_id=pod.pod_id) is None
        with pytest.raises(NotFoundError):
            client.pods.get(pod_id=pod.pod_id)
    lines = access_lines(pods_behind_proxy, f"{name}-sdk", count=4)
    assert [line.split()[3:5] for line in lines] == [
        ["POST", "/agent/v0/pods"], ["GET", "/agent/v0/pods"], ["DELETE", f"/agent/v0/pods/{pod.pod_id}"],
        ["GET", f"/agent/v0/pods/{pod.pod_id}"]]
    # The address the proxy saw, passed in X-Forwarded-For: neither the proxy's own
    # (127.0.0.1, pods' peer) nor what the client claimed.
    assert all(line.endswith(" client=127.0.0.2") for line in lines), lines


def test_plain_http_is_only_a_redirect_to_https(nginx, pods_behind_proxy):
    _, http = nginx
    answer = httpx.get(f"http://127.0.0.1:{http}/agent/v0/pods", headers={"X-Request-Id": "plain-http"})
    assert answer.status_code == 308 and answer.headers["location"] == "https://127.0.0.1/agent/v0/pods"
    assert access_lines(pods_behind_proxy, "plain-http", count=0) == []


def test_a_body_over_the_limit_is_refused_by_the_proxy_with_pods_own_413(proxy, certificate, pods_behind_proxy):
    name, https, _ = proxy
    url = f"https://127.0.0.1:{https}/agent/v0/pods"
    auth = {"Authorization": f"Bearer {pods_behind_proxy.bootstrap_token}", "Content-Type": "application/json"}
    with certificate.client() as http:
        # Exactly 64 KiB passes the proxy and reaches pods (400: a name that long is invalid) ...
        at_limit = b'{"name": "' + b"x" * (BODY_LIMIT - 12) + b'"}'
        assert len(at_limit) == BODY_LIMIT
        answer = http.post(url, content=at_limit, headers={**auth, "X-Request-Id": f"{name}-at-limit"})
        assert answer.status_code == 400 and "name" in answer.json()["errors"]
        assert access_lines(pods_behind_proxy, f"{name}-at-limit")
        # ... one byte more is the proxy's 413, pods' own JSON error, and pods never sees it.
        over = at_limit[:-2] + b'x"}'
        answer = http.post(url, content=over, headers={**auth, "X-Request-Id": f"{name}-over"})
        assert answer.status_code == 413
        assert answer.headers["content-type"].startswith("application/json")
        assert json.loads(answer.content) == TOO_LARGE_BODY
    with certificate.client() as http:  # a new connection: the proxy closed the one that sent too much
        # A chunked body says no length: nginx counts it and refuses it, Caddy passes it to pods, which does.
        chunked = http.post(url, content=iter([b'{"name": "', b"x" * 70_000, b'"}']),
                            headers={**auth, "X-Request-Id": f"{name}-chunked"})
        assert chunked.status_code == 413 and json.loads(chunked.content) == TOO_LARGE_BODY
        # pods logs requests in the order it answers them: once a later one is logged, an earlier one would be too.
        assert http.get(url, headers={**auth, "X-Request-Id": f"{name}-after"}).status_code == 200
    assert access_lines(pods_behind_proxy, f"{name}-after")
    assert access_lines(pods_behind_proxy, f"{name}-over", count=0) == []
    refused_by_pods = [line.split()[5] for line in access_lines(pods_behind_proxy, f"{name}-chunked", count=0)]
    assert refused_by_pods == ([] if name == "nginx" else ["413"])


# -- PostgreSQL, as docs/deployment.md says ------------------------------------------------


@pytest.fixture
def postgres_admin(request):
    """The test server's superuser URL (skips or fails as the other PostgreSQL tests do)."""
    request.getfixturevalue("postgres")
    return dbtools.ADMIN_URL


@pytest.mark.parametrize("variant", ["public", "own-schema"])
def test_the_postgresql_recipe_works_as_written_with_a_role_that_is_no_superuser(
        postgres_admin, tmp_path, variant):
    psql = tool("psql", "postgresql-client")
    blocks = code_blocks(section(DEPLOYMENT.read_text(), "6. PostgreSQL"))
    assert len(blocks) == 2
    name = f"podsrecipe_{secrets.token_hex(4)}"  # the recipe's role, database and schema, all "pods"
    admin = urlsplit(postgres_admin)
    env_file = tmp_path / "pods.env"
    env_file.write_text("PODS_TRUSTED_PROXY=127.0.0.1\n")
    env = {**os.environ, "PGPASSWORD": admin.password or ""}

    def as_written(block: str) -> str:
        """The block with the test server for the local one, a file of the test's for
        /etc/pods/pods.env, and names of the test's own."""
        block = block.replace("/etc/pods/pods.env", "@ENV_FILE@")
        block = re.sub(r"\bpods\b", name, block.replace("%3Dpods", "%3D pods"))  # the schema in the URL too
        block = block.replace("%3D ", "%3D")
        block = block.replace("runuser -u postgres -- psql",
                              f"{psql} -h {admin.hostname} -p {admin.port or 5432} -U {admin.username}")
        block = block.replace("127.0.0.1:5432", f"{admin.hostname}:{admin.port or 5432}")
        return block.replace("@ENV_FILE@", str(env_file))

    try:
        run(["bash", "-euc", as_written(blocks[0])], env=env)
        if variant == "own-schema":
            run(["bash", "-euc", as_written(blocks[1])], env=env)
        [url] = [line.split("=", 1)[1] for line in env_file.read_text().splitlines() if line.startswith("PODS_DB=")]
        role = dbtools.query(postgres_admin, "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles"
                                             " WHERE rolname = ?", (name,))
        assert role == [(False, False, False)]

        initialised = run_app("init", env={"PODS_DB": url}, cwd=tmp_path)
        assert initialised.returncode == 0, initialised.stderr
        token = initialised.stdout.splitlines()[-1]
        schema = name if variant == "own-schema" else "public"
        owners = dbtools.query(dbtools.with_database(postgres_admin, name),
                               "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = ?", (schema,))
        assert owners == [(name,)]
        server = Server(url, workdir=tmp_path)
        try:
            made = httpx.post(server.url + "/agent/v0/pods", json={"client_id": "on-postgres"},
                              headers={"Authorization": f"Bearer {token}"})
            assert made.status_code == 200, made.text
        finally:
            assert server.stop() == 0
        checked = run_app("check", env={"PODS_DB": url}, cwd=tmp_path)
        assert checked.returncode == 0 and checked.stdout.strip().endswith(": ok"), checked.stderr
    finally:
        dbtools.close_connections()
        dbtools.query(postgres_admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        dbtools.query(postgres_admin, f'DROP ROLE IF EXISTS "{name}"')
