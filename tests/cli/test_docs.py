"""The README and docs/ checked against the code and a running server, so that they
cannot drift: every example in docs/api.md is run against a live server and its
answer compared (status line, headers, body shape); the flag table is the click
options; every link and anchor resolves; every python in a shell line is one that
has the packages; every test the guarantees cite exists.

How an example is written in docs/api.md (a ``console`` block):

    $ curl -si http://127.0.0.1:8080/agent/v0/pods -H "Authorization: Bearer $KEY"
    HTTP/1.1 200 OK
    Content-Type: application/json

    {"count":0,"limit":10,"pods":[]}

A command starts with ``$ `` (continued on the next lines after a trailing
backslash); ``$ NAME=value`` sets a variable for the commands after it. The answer
is what ``curl -si`` prints, less the headers every answer carries (OMITTED). The
examples run in order against one new server, as one session, with ``$KEY`` its
first key. Ids, tokens and times differ from run to run: a value under a key of
VARYING is matched by its form, and the example's value stands for the server's
from then on (in later commands and answers), so that an example that shows the
same pod twice must get the same pod twice.
"""

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
README = ROOT / "README.md"
API = ROOT / "docs" / "api.md"
OPERATIONS = ROOT / "docs" / "operations.md"
GUARANTEES = ROOT / "docs" / "guarantees.md"


def documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


# ---------------------------------------------------------------------------
# Markdown


@dataclass
class Block:
    """A fenced code block: its language, the line number of its first line of
    content (1-based) and its lines."""

    lang: str
    line: int
    lines: list[str]


FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def fenced_blocks(path: Path) -> list[Block]:
    blocks, current, fence = [], None, None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if current is None:
            if m:
                fence = m.group(2)
                current = Block(m.group(3).lower(), number + 1, [])
        elif m and m.group(2).startswith(fence) and not m.group(3):
            blocks.append(current)
            current = None
        else:
            current.lines.append(line)
    assert current is None, f"{path.name}: a code block opened at line {current.line - 1} is never closed"
    return blocks


def prose(path: Path) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, with their numbers."""
    inside, fence, lines = False, None, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = FENCE.match(line)
        if m and not inside:
            inside, fence = True, m.group(2)
        elif m and inside and m.group(2).startswith(fence) and not m.group(3):
            inside = False
        elif not inside:
            lines.append((number, line))
    return lines


def without_code_spans(line: str) -> str:
    return re.sub(r"(`+).*?\1", "", line)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text as rendered (no markup), lowercase,
    punctuation dropped (letters, digits, ``_`` and ``-`` kept), each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFC", text.strip().lower())
    return "".join(c for c in text if c.isalnum() or c in "_- ").replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in ``path``; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose(path):
        m = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(path: Path) -> list[tuple[int, str]]:
    return [(number, m.group(1)) for number, line in prose(path) for m in LINK.finditer(without_code_spans(line))]


# ---------------------------------------------------------------------------
# Links


def link_problems(path: Path) -> list[str]:
    problems = []
    for number, target in links(path):
        where = f"{path.relative_to(ROOT)}:{number}: {target}"
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        if "shared" in Path(file_part).parts:
            problems.append(f"{where}: links into shared/, which users do not have")
            continue
        resolved = (path.parent / file_part).resolve() if file_part else path
        try:
            inside = resolved.relative_to(ROOT)
        except ValueError:
            problems.append(f"{where}: points outside the repository")
            continue
        if not resolved.exists():
            problems.append(f"{where}: no such file")
            continue
        if anchor:
            if resolved.suffix != ".md":
                problems.append(f"{where}: an anchor into a file that is not markdown")
            elif anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with the anchor #{anchor} in {inside}")
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_to_a_file_and_an_anchor(path):
    assert link_problems(path) == []


def test_the_link_check_catches_a_missing_file_a_missing_anchor_and_shared(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title: `one`, two!\n\n## Title: `one`, two!\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md#title-one-two) [ok](docs/a.md#title-one-two-1) [ok](#here) [web](https://x.org/#y)\n"
        "# Here\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) [spec](../shared/spec/x.md) [up](../x.md)\n"
        "`[code](nope.md)`\n"
        "```\n[in a block](nowhere.md)\n```\n"
    )
    assert [p.split(": ", 2)[1:] for p in link_problems(page)] == [
        ["docs/b.md", "no such file"],
        ["docs/a.md#nope", "no heading with the anchor #nope in docs/a.md"],
        ["../shared/spec/x.md", "links into shared/, which users do not have"],
        ["../x.md", "points outside the repository"],
    ]


def test_github_anchor_rules():
    assert slug("Create: `POST /agent/v0/api-keys`, `POST /agent/v0/pods/{pod_id}/api-keys`") == (
        "create-post-agentv0api-keys-post-agentv0podspod_idapi-keys"
    )
    assert slug("Backups, restore and checks") == "backups-restore-and-checks"
    assert slug("What is guaranteed, and the test that proves it") == "what-is-guaranteed-and-the-test-that-proves-it"


# ---------------------------------------------------------------------------
# Shell lines: every python is one that has the packages


SHELL_LANGS = {"sh", "bash", "shell", "console"}
# A bare interpreter may run what needs nothing but the standard library (or the
# one self-contained file): making the venv, making a token, running pods.pyz.
BARE_PYTHON_ALLOWED = re.compile(r"^python3? (-m venv |-I pods\.pyz|pods\.pyz|-c \"import secrets;)")
PYTHON = re.compile(r"(?<![\w/.-])(python3?(?:\.\d+)?)(?=\s|$)")


def shell_lines(path: Path) -> list[tuple[int, str]]:
    """The command lines of the shell blocks: in a ``console`` block only those
    after ``$ `` (the rest is output); continuation lines count as their own."""
    lines = []
    for block in fenced_blocks(path):
        if block.lang not in SHELL_LANGS:
            continue
        continuing = False
        for offset, line in enumerate(block.lines):
            if block.lang == "console" and not continuing:
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            lines.append((block.line + offset, code))
            continuing = line.rstrip().endswith("\\")
    return lines


def python_problems(path: Path) -> list[str]:
    problems = []
    for number, line in shell_lines(path):
        for m in PYTHON.finditer(line):
            if not BARE_PYTHON_ALLOWED.match(line[m.start():]):
                problems.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_lines_run_python_from_the_venv_or_as_pods(path):
    """A bare ``python`` in a fresh clone has none of the packages (or is no command
    at all): ``.venv/bin/python app.py``, or ``pods`` once installed."""
    assert python_problems(path) == []


def test_the_python_lint_catches_a_bare_python(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "x.md"
    page.write_text(
        "```sh\n"
        ".venv/bin/python app.py keys list\n"
        "python3 -m venv .venv && .venv/bin/pip install -e .\n"
        "python app.py init          # wrong\n"
        "PODS_DB=x.db python3 -m pods\n"
        "# python app.py in a comment is fine\n"
        "```\n"
        "```console\n$ python -m pytest\noutput from python app.py\n```\n"
    )
    assert [p.split(": ", 1)[0] for p in python_problems(page)] == ["x.md:4", "x.md:5", "x.md:9"]


# ---------------------------------------------------------------------------
# The flag table in docs/operations.md is the click options


def table_rows(path: Path, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header row starts with ``| first_header |``."""
    rows, inside = [], False
    for _, line in prose(path):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            if inside:
                break
            continue
        if not inside:
            inside = cells[0] == first_header
            continue
        if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):  # not the |---| line
            rows.append(cells)
    return rows


def code(cell: str) -> str:
    """The first code span of a cell ('' when none)."""
    m = re.search(r"`([^`]*)`", cell)
    return m.group(1) if m else ""


def option_rows(command: click.Command) -> dict[str, tuple[str, str]]:
    """--flag: (variable, default as the table writes it) for every option of ``command``."""
    rows = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in ("help", "version"):
            continue
        flag = max(param.opts, key=len)
        if isinstance(param.show_default, str):
            default = param.show_default
        elif param.default in (None, "", ()):
            default = ""
        elif isinstance(param.default, float) and param.default.is_integer():
            default = str(int(param.default))
        else:
            default = str(param.default)
        rows[flag] = (param.envvar or "", default)
    return rows


def test_the_flag_table_is_every_option_with_its_variable_and_default():
    from pods.cli import cli

    documented = {}
    for flag, variable, default, *_ in table_rows(OPERATIONS, "flag"):
        key = code(flag) or code(variable)
        assert key not in documented, f"{key} is in the table twice"
        documented[key] = (code(variable), re.sub(r"`", "", default).strip())
    expected = dict(option_rows(cli))
    expected["PODS_API_KEY"] = ("PODS_API_KEY", "")  # read from the environment only: no flag
    assert documented == expected


def test_the_command_table_is_every_command():
    from pods.cli import cli

    def names(group, prefix=""):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from names(command, f"{prefix}{name} ")
            else:
                yield f"{prefix}{name}"

    documented = [code(row[0]) for row in table_rows(OPERATIONS, "command")]
    # The first words of each cell, up to the first option or argument.
    documented = {" ".join(w for w in cell.split() if re.fullmatch(r"[a-z-]+", w) and not w.startswith("-"))
                  for cell in documented}
    assert documented == set(names(cli))


# ---------------------------------------------------------------------------
# The guarantees cite tests that exist


TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


def test_every_test_the_docs_cite_exists():
    cited = 0
    missing = []
    for path in documents():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in TEST_REFERENCE.finditer(line):
                cited += 1
                test_file = ROOT / m.group(1)
                if not test_file.exists():
                    missing.append(f"{path.name}:{number}: {m.group(1)} does not exist")
                elif m.group(2) and not re.search(rf"^\s*(async )?def {m.group(2)}\(", test_file.read_text(encoding="utf-8"), re.M):
                    missing.append(f"{path.name}:{number}: {m.group(1)} has no {m.group(2)}")
    assert cited > 0
    assert missing == []


def test_every_guarantee_names_a_test():
    rows = table_rows(GUARANTEES, "guarantee")
    assert rows, "docs/guarantees.md has no table of guarantees"
    assert [row[0] for row in rows if not TEST_REFERENCE.search(row[-1])] == []


# ---------------------------------------------------------------------------
# The permission names in docs/api.md are the SDK's


def test_the_permission_names_are_the_sdks_in_its_order():
    from agentmail.api_keys.types import ApiKeyPermissions

    text = API.read_text(encoding="utf-8")
    block = next(b for b in fenced_blocks(API) if b.lang == "" and "pod_read" in " ".join(b.lines))
    names = " ".join(block.lines).split()
    assert names == list(ApiKeyPermissions.model_fields)
    assert f"exactly the {len(names)} of the SDK's" in text


# ---------------------------------------------------------------------------
# Examples of docs/api.md: parsing and comparing


@dataclass
class Example:
    line: int  # where the command starts in the document
    command: str  # continuation lines joined
    answer: list[str] = field(default_factory=list)

    @property
    def assignment(self) -> tuple[str, str] | None:
        m = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S+)", self.command)
        return (m.group(1), m.group(2)) if m else None


def examples(path: Path) -> list[Example]:
    found = []
    for block in fenced_blocks(path):
        if block.lang != "console":
            continue
        current, continuing = None, False
        for offset, line in enumerate(block.lines):
            if continuing:
                current.command = current.command[:-1].rstrip() + " " + line.strip()
            elif line.startswith("$ "):
                current = Example(block.line + offset, line[2:].strip())
                found.append(current)
            elif current is None:
                raise AssertionError(f"{path.name}:{block.line + offset}: output before any command")
            else:
                current.answer.append(line)
            continuing = current.command.endswith("\\")
    return found


@dataclass
class Answer:
    status_line: str
    headers: list[tuple[str, str]]
    body: str

    @classmethod
    def parse(cls, text: str) -> "Answer":
        lines = text.replace("\r\n", "\n").split("\n")
        while True:
            if not lines or not lines[0].startswith("HTTP/"):
                raise ValueError(f"not an HTTP answer: {text[:200]!r}")
            status_line = lines[0].strip()
            end = lines.index("") if "" in lines else len(lines)
            headers = [tuple(part.strip() for part in h.split(":", 1)) for h in lines[1:end]]
            body = "\n".join(lines[end + 1:])
            if status_line.split()[1].startswith("1") and body.startswith("HTTP/"):  # 100 Continue
                lines = body.split("\n")
                continue
            return cls(status_line, headers, body.strip("\n"))

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


# Headers every answer carries, shown in an example only when it is about them.
OMITTED = {"date", "server", "content-length", "x-request-id"}
# Headers whose value is a set: werkzeug builds Allow from one, so its order changes from process to process.
SETS = {"allow"}
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z"
# Values that differ from server to server, by the key they stand under, and their form.
VARYING = {
    "pod_id": r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
    "api_key_id": r"[0-9a-f]{16}",
    "api_key": r"pods_[A-Za-z0-9_-]{43}",
    "prefix": r"pods_[A-Za-z0-9_-]{7}",
    "next_page_token": r"[A-Za-z0-9_-]{16,512}",
    "created_at": TIME,
    "updated_at": TIME,
    "used_at": TIME,
}


class Values:
    """The example's value of each varying thing, and the server's."""

    def __init__(self):
        self.live: dict[str, str] = {}
        self.shown: dict[str, str] = {}

    def bind(self, shown: str, live: str, where: str, problems: list[str]) -> None:
        if shown in self.live:
            if self.live[shown] != live:
                problems.append(f"{where}: {shown} stands for {self.live[shown]} earlier, but the server says {live}")
        elif live in self.shown:
            problems.append(f"{where}: {shown} and {self.shown[live]} differ in the examples, "
                            f"but are both {live} on the server")
        else:
            self.live[shown], self.shown[live] = live, shown

    def substitute(self, text: str) -> str:
        for shown in sorted(self.live, key=len, reverse=True):
            text = text.replace(shown, self.live[shown])
        return text


def compare_json(shown, live, values: Values, where: str = "body") -> list[str]:
    """Where ``live`` differs from ``shown`` in its shape: keys and their order, types,
    and every value except the varying ones, which must have their form."""
    problems: list[str] = []
    _bind(shown, live, values, where, problems)
    if not problems:
        _compare(shown, live, values, where, problems)
    return problems


def _bind(shown, live, values, where, problems, key=None):
    if isinstance(shown, dict) and isinstance(live, dict):
        for k in shown.keys() & live.keys():
            _bind(shown[k], live[k], values, f"{where}.{k}", problems, k)
    elif isinstance(shown, list) and isinstance(live, list):
        for i, (s, v) in enumerate(zip(shown, live)):
            _bind(s, v, values, f"{where}[{i}]", problems)
    elif key in VARYING and isinstance(shown, str) and isinstance(live, str):
        form = VARYING[key]
        if not re.fullmatch(form, shown):
            problems.append(f"{where}: the example's {shown!r} is not of the form {form}")
        elif not re.fullmatch(form, live):
            problems.append(f"{where}: the server's {live!r} is not of the form {form}")
        else:
            values.bind(shown, live, where, problems)


def _compare(shown, live, values, where, problems):
    if type(shown) is not type(live):
        problems.append(f"{where}: the example has {type(shown).__name__} {shown!r}, "
                        f"the server {type(live).__name__} {live!r}")
    elif isinstance(shown, dict):
        if list(shown) != list(live):
            problems.append(f"{where}: the example's keys are {list(shown)}, the server's {list(live)}")
        else:
            for k in shown:
                _compare(shown[k], live[k], values, f"{where}.{k}", problems)
    elif isinstance(shown, list):
        if len(shown) != len(live):
            problems.append(f"{where}: the example lists {len(shown)} item(s), the server {len(live)}")
        else:
            for i, (s, v) in enumerate(zip(shown, live)):
                _compare(s, v, values, f"{where}[{i}]", problems)
    elif isinstance(shown, str):
        if values.substitute(shown) != live:
            problems.append(f"{where}: the example has {shown!r}, the server {live!r}")
    elif shown != live:
        problems.append(f"{where}: the example has {shown!r}, the server {live!r}")


def compact(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def compare_answers(shown: Answer, live: Answer, values: Values) -> list[str]:
    problems = []
    if shown.status_line != live.status_line:
        problems.append(f"status: the example has {shown.status_line!r}, the server {live.status_line!r}")
    for name, value in shown.headers:
        got = live.header(name)
        if got is None:
            problems.append(f"header {name}: shown, but the server sends none")
        elif name.lower() in SETS and sorted(value.split(", ")) == sorted(got.split(", ")):
            continue
        elif values.substitute(value) != got:
            problems.append(f"header {name}: the example has {value!r}, the server {got!r}")
    shown_names = {name.lower() for name, _ in shown.headers}
    for name, value in live.headers:
        if name.lower() not in OMITTED | shown_names:
            problems.append(f"header {name}: the server sends {value!r}, the example does not show it")
    if not shown.body or not live.body:
        if shown.body != live.body:
            problems.append(f"body: the example has {shown.body!r}, the server {live.body[:300]!r}")
        return problems
    try:
        shown_json = json.loads(shown.body)
    except ValueError:
        return [*problems, f"body: the example's body is not JSON: {shown.body[:200]!r}"]
    if compact(shown_json) != shown.body:
        problems.append("body: the example's body is not written as the server sends it (compact JSON, one line)")
    try:
        live_json = json.loads(live.body)
    except ValueError:
        return [*problems, f"body: the server's body is not JSON: {live.body[:200]!r}"]
    return problems + compare_json(shown_json, live_json, values)


def test_the_answer_comparison_catches_each_kind_of_drift():
    shown = Answer.parse(
        "HTTP/1.1 200 OK\nContent-Type: application/json\n\n"
        '{"pod_id":"2ddb8e83-e608-446c-a9f6-106800ce1df6","name":"2ddb8e83-e608-446c-a9f6-106800ce1df6",'
        '"client_id":null,"created_at":"2026-11-29T15:27:46.114450Z","updated_at":"2026-11-29T15:27:46.114450Z"}'
    )
    live_pod = {"pod_id": "15e7a8b6-351f-429c-ac90-d3a2339e5b82", "name": "15e7a8b6-351f-429c-ac90-d3a2339e5b82",
                "client_id": None, "created_at": "2026-12-01T00:00:00.000001Z",
                "updated_at": "2026-12-01T00:00:00.000001Z"}

    def live(status="HTTP/1.1 200 OK", headers=(("Content-Type", "application/json"), ("Date", "x")), **changes):
        return Answer(status, list(headers), compact({**live_pod, **changes}))

    assert compare_answers(shown, live(), Values()) == []
    assert compare_answers(shown, live(status="HTTP/1.1 201 CREATED"), Values()) != []
    assert compare_answers(shown, live(headers=[("Content-Type", "text/html")]), Values()) != []
    assert compare_answers(shown, live(headers=[("Content-Type", "application/json"), ("Allow", "GET")]),
                           Values()) != []
    assert compare_answers(shown, live(client_id=""), Values()) != []  # a type
    assert compare_answers(shown, live(name="Acme"), Values()) != []  # a value
    assert compare_answers(shown, live(created_at="2026-12-01T00:00:00Z"), Values()) != []  # a form
    assert compare_answers(shown, live(updated_at="2026-12-01T00:00:00.000002Z"), Values()) != []  # equal ones
    assert compare_answers(shown, Answer("HTTP/1.1 200 OK", [("Content-Type", "application/json")],
                                         compact(dict(reversed(live_pod.items())))), Values()) != []  # order
    values = Values()
    assert compare_answers(shown, live(), values) == []
    assert compare_answers(shown, live(pod_id="b7b440ee-4b93-4b69-9ce3-618a98419398"), values) != []  # the same pod
    assert values.substitute("/pods/2ddb8e83-e608-446c-a9f6-106800ce1df6") == f"/pods/{live_pod['pod_id']}"


# ---------------------------------------------------------------------------
# Examples against a live server


def curl_environment(home: Path, key: str) -> dict[str, str]:
    # No proxy and no ~/.curlrc of whoever runs the tests: the command as written.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C", "KEY": key}


def run_examples(path: Path, url: str, key: str, home: Path) -> list[str]:
    """Run the examples of ``path`` in order; returns what differs, by example."""
    values, env, problems = Values(), curl_environment(home, key), []
    for example in examples(path):
        where = f"{path.relative_to(ROOT)}:{example.line}: $ {example.command}"
        if example.assignment:
            name, value = example.assignment
            env[name] = values.substitute(value)
            continue
        words = shlex.split(example.command)
        if words[0] != "curl" or not any(re.fullmatch(r"-[a-zA-Z]*[iI][a-zA-Z]*", w) for w in words):
            problems.append(f"{where}: an example is a curl command with -i (the answer shows the status)")
            continue
        command = values.substitute(example.command.replace("http://127.0.0.1:8080", url))
        done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, timeout=60)
        try:
            live = Answer.parse(done.stdout.decode("latin-1"))
            shown = Answer.parse("\n".join(example.answer))
        except ValueError as e:
            problems.append(f"{where}: {e} (curl exit {done.returncode}: {done.stderr.decode()[:200]})")
            continue
        problems += [f"{where}\n    {p}" for p in compare_answers(shown, live, values)]
    return problems


@pytest.fixture
def server(tmp_path):
    """A new server on a new SQLite database: (url, its first key)."""
    from live import Server

    server = Server(tmp_path / "pods.db")
    try:
        yield server.url, server.bootstrap_token
    finally:
        assert server.stop() == 0, server.stderr


def test_api_md_has_examples_of_every_kind():
    found = examples(API)
    assert len(found) >= 20
    statuses = {e.answer[0].split()[1] for e in found if not e.assignment}
    assert {"200", "400", "401", "403", "404", "405", "431", "501"} <= statuses


@pytest.mark.live
def test_every_example_in_api_md_is_what_the_server_answers(server, tmp_path):
    if shutil.which("curl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("curl is needed to run the examples of docs/api.md")
        pytest.skip("curl is needed to run the examples of docs/api.md")
    url, key = server
    problems = run_examples(API, url, key, tmp_path)
    assert not problems, "docs/api.md differs from the server:\n" + "\n".join(problems)


def run_python_blocks(path: Path, url: str, key: str) -> int:
    """Run the python blocks of ``path`` in order in one namespace, against the
    server at ``url``: the SDK's base URL and the key ``"pods_..."`` are the
    server's. Returns how many ran."""
    namespace: dict = {}
    ran = 0
    for block in fenced_blocks(path):
        if block.lang != "python":
            continue
        source = "\n".join(block.lines).replace("http://127.0.0.1:8080", url).replace('"pods_..."', repr(key))
        compiled = compile("\n" * (block.line - 1) + source, str(path), "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compiled, namespace)  # noqa: S102 - the document's own examples
        ran += 1
    return ran


@pytest.fixture
def closing_http_clients(monkeypatch):
    """Close every httpx client made meanwhile (the examples' SDK clients), at the end."""
    import httpx

    made = []
    original = httpx.Client.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(httpx.Client, "__init__", init)
    yield
    for client in made:
        client.close()


@pytest.mark.live
@pytest.mark.parametrize("path", [README, API], ids=["README.md", "docs/api.md"])
def test_the_sdk_examples_run_against_a_server(path, server, closing_http_clients):
    url, key = server
    assert run_python_blocks(path, url, key) > 0


@pytest.mark.live
def test_the_endpoint_table_of_api_md_is_the_openapi_document(server):
    """The reference's table of endpoints, and the OpenAPI document the server
    publishes, name the same operations."""
    import httpx

    url, _ = server
    document = httpx.get(url + "/agent/v0/openapi.json", timeout=10).json()
    published = {
        (method.upper(), "/agent" + path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    }
    documented = set()
    for method, path, *_ in table_rows(API, "method"):
        for one in method.split(","):
            documented.add((one.strip(), code(path)))
    documented.discard(("GET", "/healthz"))  # served, and not under /agent/v0
    assert documented == published
    count = len(published)
    assert f"the {count} operations" in API.read_text(encoding="utf-8")
