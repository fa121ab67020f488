"""Every private or undocumented part of waitress, Flask, flask-httpauth, marshmallow,
psycopg and psycopg-pool that pods relies on, in one list (PINNED), checked against
the versions installed.

An upgrade that removes, renames or changes the kind of one of them fails here,
naming it, the pods code that relies on it and why, rather than somewhere far
away, or nowhere: a method pods overrides that the library no longer has, or no
longer calls by that name, is silently never called. So every method a pods class
overrides in a class of those libraries is listed too, and a test fails when one
is added without being listed. pyproject.toml holds each library to the minor
version this list was last checked against.

To move a pin up: install the new version, run this file, and read the pods code
each failure names against the new version's; fix it, update the entry, then run
the whole suite.
"""

import importlib
import inspect
import pkgutil
import socket
import threading
from importlib.metadata import version
from typing import NamedTuple

import pytest

import pods

LIBRARIES = {  # module: distribution
    "waitress": "waitress",
    "flask": "flask",
    "flask_httpauth": "flask-httpauth",
    "marshmallow": "marshmallow",
    "psycopg": "psycopg",
    "psycopg_pool": "psycopg-pool",
}


class Pin(NamedTuple):
    target: str  # "module:Class.name", "module:name"
    kind: str  # see KINDS
    user: str  # the pods class or function that relies on it ("Class.method")
    why: str
    keywords: tuple[str, ...] = ()  # for "call": the parameters pods passes by name


KINDS = {
    "class": "a class",
    "function": "a function",
    "method": "a method",
    "override": "a method, which pods overrides",
    "property": "a property (read as a value, not called)",
    "attribute": "an attribute (a value; instance state where the library sets it per object)",
    "call": "a callable taking these keyword arguments",
    "environ": "a key of the WSGI environ waitress gives the app",
}

W = "waitress"
PINNED = [
    # -- waitress: the request parser (PodsRequestParser) ------------------------------------
    Pin(f"{W}.parser:HTTPRequestParser.parse_header", "override", "PodsRequestParser.parse_header",
        "refuses folded headers, a missing or unknown HTTP version, TE in 1.0, TE with CL"),
    Pin(f"{W}.parser:HTTPRequestParser.received", "override", "PodsRequestParser.received",
        "turns waitress's own 413 into a request handed to the app, then drops the rest"),
    Pin(f"{W}.parser:HTTPRequestParser.close", "method", "PodsRequestParser.received",
        "frees the part of a chunked body buffered so far"),
    *(Pin(f"{W}.parser:HTTPRequestParser.{name}", "attribute", "PodsRequestParser", why) for name, why in [
        ("version", "the request's HTTP version, checked and rewritten"),
        ("headers", "read for Transfer-Encoding and Content-Length, reset to parse again as 1.1"),
        ("chunked", "Content-Length together with Transfer-Encoding is refused"),
        ("error", "set by waitress from a ParsingError; replaced (505) or cleared (413 by the app)"),
        ("expect_continue", "cleared: never invite an oversized body with 100 Continue"),
        ("body_rcv", "cleared with an oversized body"),
        ("content_length", "what an oversized body announced"),
        ("body_bytes_received", "what came of an oversized body"),
        ("headers_finished", "PodsChannel.received: the head is complete, its deadline stops; "
                             "PodsRequestParser.received: the moment Admission.at_head decides"),
        ("completed", "set with a body withheld (refused, or answered without it)"),
        ("command", "JsonErrorTask logs the method of a refused request"),
        ("path", "JsonErrorTask logs the path of a refused request"),
    ]),
    Pin(f"{W}.parser:ParsingError", "class", "PodsRequestParser.parse_header",
        "raised inside parse_header, waitress answers it 400"),
    Pin(f"{W}.utilities:Error", "class", "HttpVersionNotSupported", "the base of waitress's own answers (505 here)"),
    Pin(f"{W}.utilities:Error.code", "attribute", "JsonErrorTask.execute", "the status of waitress's own answer"),
    Pin(f"{W}.utilities:Error.reason", "attribute", "JsonErrorTask.execute", "its reason phrase"),
    Pin(f"{W}.utilities:RequestEntityTooLarge", "class", "PodsRequestParser.received",
        "how waitress says a body is over max_request_body_size"),
    # -- waitress: tasks (CoalescingTask, JsonErrorTask) ---------------------------------------
    Pin(f"{W}.task:WSGITask.start", "override", "CoalescingTask.start",
        "an oversized request, or any during shutdown, closes its connection after the answer"),
    Pin(f"{W}.task:Task.start", "override", "JsonErrorTask.start",
        "waitress's own answers have their queue wait observed (metrics)"),
    Pin(f"{W}.task:WSGITask.get_environment", "override", "CoalescingTask.get_environment",
        "an oversized request reaches the app with no body and its real length"),
    Pin(f"{W}.task:WSGITask.write", "override", "CoalescingTask.write",
        "the head and a one-piece body in one send"),
    Pin(f"{W}.task:ErrorTask.execute", "override", "JsonErrorTask.execute",
        "waitress's own answers in the JSON error shape, logged"),
    Pin(f"{W}.task:Task.set_close_on_finish", "method", "CoalescingTask.start", "closes after the answer"),
    Pin(f"{W}.task:Task.build_response_header", "method", "CoalescingTask.write", "the head, sent with the body"),
    Pin(f"{W}.task:Task.has_body", "property", "CoalescingTask.write", "whether the answer may have a body"),
    *(Pin(f"{W}.task:WSGITask.{name}", "attribute", "CoalescingTask.write", why) for name, why in [
        ("wrote_header", "whether the head is sent already"),
        ("complete", "whether start_response was called"),
        ("content_length", "what the app announced"),
        ("content_bytes_written", "the body's bytes counted as waitress counts them"),
        ("chunked_response", "a chunked answer is left to waitress"),
        ("request", "the parser, with pods' too_large"),
        ("channel", "the connection, to write to"),
    ]),
    *(Pin(f"{W}.task:ErrorTask.{name}", "attribute", "JsonErrorTask.execute", why) for name, why in [
        ("status", "set to the error's status line"),
        ("response_headers", "the JSON content type and the request id added"),
    ]),
    Pin(f"{W}.task:WSGITask.get_environment", "environ", "HttpRules", "the request target as sent: REQUEST_URI",
        ("REQUEST_URI",)),
    Pin(f"{W}.task:ThreadedTaskDispatcher.queue_logger", "attribute", "run_until_signalled",
        "QueueDepthSummary filters the 'waitress.queue' logger and reads the depth from its first argument"),
    Pin(f"{W}.task:ThreadedTaskDispatcher.shutdown", "call", "run_until_signalled",
        "stops the worker threads at shutdown", ("cancel_pending", "timeout")),
    Pin(f"{W}.task:ThreadedTaskDispatcher.add_task", "method", "PodsServer.add_task",
        "hands a channel's next request to a thread"),
    Pin(f"{W}.task:WSGITask.execute", "override", "CoalescingTask.execute",
        "a request refused before it ran (429, shed 503) is answered without the app"),
    Pin(f"{W}.task:Task.build_response_header", "override", "CoalescingTask.build_response_header",
        "RateLimit-* and Retry-After added; the tenant map learns a token before the answer goes out"),
    *(Pin(f"{W}.task:WSGITask.{name}", "attribute", "CoalescingTask.build_response_header", why)
      for name, why in [("environ", "the caller authentication left in it"), ("status", "401: a token forgotten")]),
    # -- waitress: the worker threads (FairDispatcher) ------------------------------------------
    *(Pin(f"{W}.task:ThreadedTaskDispatcher.{name}", "override", f"FairDispatcher.{name}", why) for name, why in [
        ("add_task", "queues fairly (FairQueue) instead of first come, first served"),
        ("handler_thread", "takes the next request in turn; sheds one that waited too long"),
        ("shutdown", "cancels what FairQueue holds"),
    ]),
    Pin(f"{W}.task:ThreadedTaskDispatcher.set_thread_count", "method", "PodsServer.__init__",
        "starts the worker threads, which run FairDispatcher.handler_thread"),
    *(Pin(f"{W}.task:ThreadedTaskDispatcher.{name}", "attribute", "FairDispatcher", why) for name, why in [
        ("lock", "guards the queue, as waitress's does"),
        ("queue_cv", "an idle thread waits on it"),
        ("thread_exit_cv", "a stopping thread says so"),
        ("threads", "the threads running"),
        ("stop_count", "threads asked to stop"),
        ("active_count", "threads not waiting: whether to wake one"),
        ("logger", "an exception escaping a task"),
    ]),
    # -- waitress: the channel (PodsChannel) ---------------------------------------------------
    *(Pin(f"{W}.channel:HTTPChannel.{name}", "override", f"PodsChannel.{name}", why) for name, why in [
        ("writable", "not while a task thread sends its own output (the event loop would spin)"),
        ("received", "when a request's head began to arrive, for its deadline"),
        ("readable", "reads on while dropping an oversized body"),
        ("handle_read", "reads and drops an oversized body"),
        ("handle_write", "lingers after the answer; hands over a pipelined request once it is sent"),
    ]),
    Pin(f"{W}.channel:HTTPChannel.send_continue", "method", "PodsChannel.key_checked",
        "100 Continue, held back while the key of the request is looked up, sent once it is live"),
    Pin(f"{W}.channel:HTTPChannel.service", "method", "PodsServer.maintenance",
        "answers (503) a request shed from the event loop"),
    Pin(f"{W}.trigger:_triggerbase.pull_trigger", "method", "KeyCheck.service",
        "runs the verdict on a key in the event loop (a thunk)"),
    Pin(f"{W}.trigger:_triggerbase.pull_trigger", "method", "PodsServer.__init__",
        "wakes the loop for a worker waiting for its turn (LoopHandoff), no thunk"),
    Pin(f"{W}.channel:HTTPChannel", "call", "PodsChannel.__init__", "subclassed with the same constructor",
        ("server", "sock", "addr", "adj", "map")),
    *(Pin(f"{W}.channel:HTTPChannel.{name}", "attribute", "PodsChannel", why) for name, why in [
        ("task_class", "set to CoalescingTask"),
        ("error_task_class", "set to JsonErrorTask"),
        ("parser_class", "set per channel, so that the parser knows its channel"),
        ("creation_time", "a new connection's first head is due from its opening"),
        ("requests", "requests being served: busy, deadlines, writable"),
        ("request", "the request being read"),
        ("will_close", "writable, handle_write"),
        ("close_when_flushed", "the answer is complete: linger instead of closing"),
        ("total_outbufs_len", "unsent output: busy, deadlines, PodsServer.add_task"),
        ("outbuf_lock", "held while deciding that the output is empty"),
        ("last_activity", "deadlines and eviction"),
        ("connected", "whether a waiting request can still be served"),
        ("adj", "recv_bytes, while dropping a body"),
        ("server", "stopping, trusted_proxies, task_dispatcher"),
        ("addr", "the client's address, for the log"),
        ("socket", "peeked for unread input; shut for writing when lingering"),
        ("requests_lock", "held while a request answered without its body joins the requests"),
        ("sent_continue", "whether 100 Continue went out already"),
    ]),
    Pin(f"{W}.channel:HTTPChannel._flush_some", "method", "PodsChannel.handle_write",
        "sends the rest of the answer before lingering"),
    Pin(f"{W}.channel:HTTPChannel._flush_exception", "method", "PodsChannel.handle_write",
        "wraps _flush_some as waitress's handle_write does"),
    Pin(f"{W}.channel:HTTPChannel.handle_close", "method", "PodsChannel.enforce_deadlines",
        "closes a connection past a deadline, or evicted"),
    Pin(f"{W}.channel:HTTPChannel.write_soon", "method", "CoalescingTask.write", "queues the head and body"),
    # -- waitress: the server (PodsServer) and its event loop ----------------------------------
    *(Pin(f"{W}.server:TcpWSGIServer.{name}", "override", f"PodsServer.{name}", why) for name, why in [
        ("add_task", "one answer at a time per connection"),
        ("run", "deadlines and the connection limit between turns of the loop"),
        ("readable", "accepts only below the connection limit"),
        ("maintenance", "enforces every connection's deadlines"),
    ]),
    Pin(f"{W}.server:TcpWSGIServer", "call", "PodsServer.__init__",
        "a server on a socket bound beforehand (one per worker), with FairDispatcher's threads",
        ("map", "_sock", "adj", "bind_socket", "sockinfo", "dispatcher")),
    *(Pin(f"{W}.server:TcpWSGIServer.{name}", "attribute", "PodsServer", why) for name, why in [
        ("channel_class", "set to PodsChannel"),
        ("_map", "the event loop's sockets: run, and shutdown's channels"),
        ("next_channel_cleanup", "when maintenance runs next"),
        ("accepting", "cleared at shutdown"),
        ("active_channels", "the connection limit and eviction"),
        ("task_dispatcher", "hands requests to threads; stopped at shutdown"),
        ("trigger", "closed last at shutdown"),
        ("adj", "cleanup_interval, connection_limit, asyncore_loop_timeout"),
    ]),
    Pin(f"{W}.wasyncore:readwrite", "function", "PodsServer._poll",
        "dispatches a polled socket's events, as wasyncore.poll2 does"),
    Pin(f"{W}.wasyncore:ExitNow", "class", "ShutdownSignal.handle_read", "raised to end the loop"),
    Pin(f"{W}.wasyncore:dispatcher", "call", "ShutdownSignal", "a socket of the loop's own", ("sock", "map")),
    Pin(f"{W}.wasyncore:dispatcher.close", "method", "run_until_signalled",
        "closes the listening socket only (not the trigger)"),
    *(Pin(f"{W}.wasyncore:dispatcher.{name}", "override", f"ShutdownSignal.{name}", "the signal's wakeup socket")
      for name in ("readable", "writable", "handle_read", "close")),
    # -- Flask ---------------------------------------------------------------------------------
    Pin("flask.json.provider:DefaultJSONProvider._prepare_response_obj", "call", "CompactJSONProvider.response",
        "what jsonify's arguments make one object of", ("args", "kwargs")),
    Pin("flask.json.provider:DefaultJSONProvider._app", "attribute", "CompactJSONProvider.response",
        "the app's response_class"),
    Pin("flask.json.provider:DefaultJSONProvider.response", "override", "CompactJSONProvider.response",
        "compact JSON with one encoder made once"),
    Pin("flask:Flask.request_context", "override", "PodsFlask.request_context",
        "requests get RoutedRequestContext, which notes the matched rule for metrics"),
    Pin("flask.ctx:RequestContext.match_request", "override", "RoutedRequestContext.match_request",
        "the rule a request matched, noted in its environ for the access log's metrics"),
    Pin("flask:Flask.raise_routing_exception", "override", "PodsFlask.raise_routing_exception",
        "a routing redirect answers 404"),
    Pin("flask:Flask.log_exception", "call", "register", "replaced on the app by a log line that escapes the path",
        ("exc_info",)),
    Pin("flask:Flask.wsgi_app", "method", "create_app", "wrapped by the HTTP rules and the access log"),
    *(Pin(f"flask.sessions:SessionInterface.{name}", "override", f"NoSessions.{name}", "no sessions at all")
      for name in ("open_session", "save_session")),
    Pin("flask:Flask.ensure_sync", "override", "PodsFlask.ensure_sync",
        "a plain function's answer remembered by its code object"),
    *(Pin(f"flask:Flask.{name}", "override", f"PodsFlask.{name}",
          "Flask's own unless the app has no such hooks (their walk by blueprint name skipped)")
      for name in ("preprocess_request", "process_response", "do_teardown_request")),
    *(Pin(f"flask:Flask.{name}", "attribute", f"PodsFlask.{hook}", "the hooks that make Flask's own run")
      for name, hook in [("url_value_preprocessors", "preprocess_request"),
                         ("before_request_funcs", "preprocess_request"),
                         ("after_request_funcs", "process_response"),
                         ("teardown_request_funcs", "do_teardown_request")]),
    Pin("flask.ctx:RequestContext._after_request_functions", "attribute", "PodsFlask.process_response",
        "after_this_request's hooks, which make Flask's own run"),
    Pin("flask.sansio.scaffold:_sentinel", "attribute", "PodsFlask.do_teardown_request",
        "do_teardown_request's default: no exception passed"),
    # -- flask-httpauth -----------------------------------------------------------------------
    Pin("flask_httpauth:HTTPTokenAuth.get_auth", "override", "ExactBearerAuth.get_auth",
        "the token exactly as sent (werkzeug's parser trims and splits it)"),
    Pin("flask_httpauth:HTTPAuth.authorize", "override", "ExactBearerAuth.authorize",
        "a role is a permission; remembers which one is missing for the 403"),
    Pin("flask_httpauth:HTTPTokenAuth.authenticate", "method", "ExactBearerAuth.get_auth",
        "reads the token from what get_auth returns, as its attribute 'token'"),
    # -- marshmallow --------------------------------------------------------------------------
    Pin("marshmallow.experimental.context:Context", "class", "PageToken._deserialize",
        "the page token's secret and organization while loading (experimental API)"),
    Pin("marshmallow.experimental.context:Context.get", "method", "PageToken._deserialize", "reads that context"),
    *(Pin(f"marshmallow.fields:{base}._deserialize", "override", f"{pods_class}._deserialize", why)
      for base, pods_class, why in [
          ("Integer", "QueryInteger", "ASCII digits only, no sign, blanks or leading zeros"),
          ("Boolean", "QueryBoolean", "true/false in any case, 1/0"),
          ("Boolean", "JSONBoolean", "true or false, nothing else"),
          ("String", "PageToken", "decodes and checks a page token"),
          ("Nested", "Permissions", "the permissions object to the set of names granted"),
          ("AwareDateTime", "FutureTime", "an expiry in the future"),
          ("Field", "Unsupported", "a field this server refuses (public_key)"),
      ]),
    Pin("marshmallow.schema:Schema._serialize", "override", "RowSchema._serialize",
        "a row of Columns dumped as one dict (each field's serialize not called)"),
    Pin("marshmallow.schema:Schema.dump_fields", "attribute", "RowSchema._serialize",
        "the fields dumped, by name; a new dict when marshmallow makes them anew"),
    *(Pin(f"marshmallow.fields:{base}.serialize", "override", f"{pods_class}.serialize", why)
      for base, pods_class, why in [
          ("String", "Column", "a row's column as stored, without marshmallow's generic path"),
          ("Nested", "Permissions", "the stored permissions as the names they grant"),
      ]),
    Pin("marshmallow.fields:Integer.default_error_messages", "attribute", "QueryInteger._deserialize",
        "raises make_error('too_large'), an error message key of Integer's"),
    # -- psycopg and psycopg-pool --------------------------------------------------------------
    Pin("psycopg_pool.base:AttemptWithBackoff.DELAY_BACKOFF", "attribute", "PostgresStorage",
        "set to 1: a lost connection is retried every second, not after 1, 2, 4, 8 ... seconds"),
    Pin("psycopg_pool.pool:AttemptWithBackoff", "class", "PostgresStorage",
        "the pool uses that class (so setting its DELAY_BACKOFF has an effect)"),
    Pin("psycopg:Connection.execute", "override", "WatchedConnection.execute", "tells the watchdog a statement waits"),
    Pin("psycopg:Connection.transaction", "override", "WatchedConnection.transaction", "and a transaction's BEGIN"),
]


# -- instances, made as pods makes them, for the attributes libraries set per object ----------


@pytest.fixture(scope="module")
def instances():
    """{"module:Class": an instance} for the classes whose state is per object."""
    from flask import Flask
    from flask.json.provider import DefaultJSONProvider
    from marshmallow import Schema
    from waitress.adjustments import Adjustments
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.server import TcpWSGIServer
    from waitress.task import ErrorTask, WSGITask
    from waitress.utilities import BadRequest

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    adj = Adjustments(sockets=[sock], threads=1)
    server = TcpWSGIServer(lambda environ, start_response: [], map={}, _sock=sock, adj=adj, bind_socket=False,
                           sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
    ours, theirs = socket.socketpair()
    channel = HTTPChannel(server, ours, ("127.0.0.1", 1), adj, map={})
    request = HTTPRequestParser(adj)
    request.received(b"GET /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n")
    refused = HTTPRequestParser(adj)
    refused.error = BadRequest("refused")
    made = {
        f"{W}.parser:HTTPRequestParser": request,
        f"{W}.task:WSGITask": WSGITask(channel, request),
        f"{W}.task:ErrorTask": ErrorTask(channel, refused),
        f"{W}.channel:HTTPChannel": channel,
        f"{W}.server:TcpWSGIServer": server,
        f"{W}.task:ThreadedTaskDispatcher": server.task_dispatcher,
    }
    app = Flask("pinned")  # the provider holds it weakly
    made["flask.json.provider:DefaultJSONProvider"] = DefaultJSONProvider(app)
    made["flask:Flask"] = app
    made["flask.ctx:RequestContext"] = app.test_request_context()
    made["marshmallow.schema:Schema"] = Schema()
    yield made
    channel.close()
    theirs.close()
    server.task_dispatcher.shutdown(timeout=2)
    server.close()


def _resolve(target: str):
    """(the object owning the name, the name, its value or a missing marker)."""
    module_name, _, qualname = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    return owner, name


MISSING = object()


def _pods_modules():
    modules = [pods]
    for info in pkgutil.walk_packages(pods.__path__, "pods."):
        if info.name != "pods.__main__":
            modules.append(importlib.import_module(info.name))
    return modules


def _where_in_pods(user: str) -> tuple[str, object]:
    """The pods module defining ``user``'s first part, and that object (MISSING if none)."""
    head = user.split(".")[0]
    for module in _pods_modules():
        if head in vars(module) and getattr(vars(module)[head], "__module__", module.__name__) == module.__name__:
            return module.__name__, vars(module)[head]
    return "not found in pods", MISSING


def _problem(pin: Pin, instances: dict) -> str | None:
    """What is wrong with ``pin`` in the installed version, or None."""
    try:
        owner, name = _resolve(pin.target)
    except (ImportError, AttributeError) as e:
        return f"cannot be reached ({e})"
    holder = instances.get(pin.target.rpartition(".")[0], owner) if pin.kind == "attribute" else owner
    value = getattr(holder, name, MISSING)
    if value is MISSING:
        return "is gone"
    static = inspect.getattr_static(owner, name, MISSING) if inspect.isclass(owner) else value
    if pin.kind == "class":
        return None if inspect.isclass(value) else "is no longer a class"
    if pin.kind == "function":
        return None if inspect.isroutine(value) else "is no longer a function"
    if pin.kind in ("method", "override"):
        if isinstance(static, property) or not callable(value):
            return "is no longer a method"
        return None
    if pin.kind == "property":
        return None if isinstance(static, property) else "is no longer a property"
    if pin.kind == "attribute":
        if isinstance(static, property) or (inspect.isroutine(value) and not inspect.isclass(value)):
            return "is no longer a plain attribute"
        return None
    if pin.kind == "call":
        parameters = inspect.signature(value).parameters
        missing = [k for k in pin.keywords if k not in parameters]
        return f"no longer takes {', '.join(missing)}" if missing else None
    if pin.kind == "environ":
        environ = getattr(instances[pin.target.rpartition(".")[0]], name)()
        missing = [k for k in pin.keywords if k not in environ]
        return f"no longer gives {', '.join(missing)}" if missing else None
    raise AssertionError(f"unknown kind {pin.kind}")


def _library_version(target: str) -> str:
    module = target.split(".")[0].split(":")[0]
    return f"{LIBRARIES[module]} {version(LIBRARIES[module])}"


@pytest.mark.parametrize("pin", PINNED, ids=lambda pin: pin.target.partition(":")[2] or pin.target)
def test_a_pinned_internal_is_there(pin, instances):
    problem = _problem(pin, instances)
    where, _ = _where_in_pods(pin.user)
    assert problem is None, (
        f"{_library_version(pin.target)}: {pin.target} {problem} (expected {KINDS[pin.kind]}"
        f"{': ' + ', '.join(pin.keywords) if pin.keywords else ''}). pods relies on it in {pin.user}"
        f" ({where}): {pin.why}. Read that code against this version before moving its pin in pyproject.toml."
    )


def test_each_pinned_user_is_pods_code_that_exists():
    """The list names real pods code, and each override is defined where it says."""
    wrong = []
    for pin in PINNED:
        where, found = _where_in_pods(pin.user)
        if found is MISSING:
            wrong.append(f"{pin.user} ({pin.target}): {where}")
        elif pin.kind == "override" and pin.user.split(".")[1] not in vars(found):
            wrong.append(f"{pin.user} does not define {pin.user.split('.')[1]}, which the list says it overrides")
    assert not wrong, "update PINNED: " + "; ".join(wrong)


def test_every_method_pods_overrides_in_those_libraries_is_pinned():
    """A new override of a library method must be listed, so that an upgrade that
    drops or renames that method fails here."""
    listed = {(pin.user, pin.target.rpartition(".")[2]) for pin in PINNED if pin.kind == "override"}
    unlisted = []
    for module in _pods_modules():
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] in LIBRARIES]
            for name, value in vars(cls).items():
                if name.startswith("__") or not (inspect.isfunction(value) or isinstance(value, property)):
                    continue
                overridden = [b for b in bases if name in vars(b)]
                if overridden and (f"{cls.__name__}.{name}", name) not in listed:
                    unlisted.append(f"{module.__name__}.{cls.__name__}.{name} overrides"
                                    f" {overridden[0].__module__}.{overridden[0].__qualname__}.{name}")
    assert not unlisted, "add to PINNED in this file: " + "; ".join(unlisted)


def test_waitress_names_its_threads_as_pods_expects():
    """run_until_signalled waits for the threads named "waitress-..." to end, so that
    their thread-local SQLite connections are closed before the last checkpoint."""
    from waitress.task import ThreadedTaskDispatcher

    dispatcher = ThreadedTaskDispatcher()
    before = set(threading.enumerate())
    dispatcher.set_thread_count(1)
    try:
        names = [t.name for t in set(threading.enumerate()) - before]
        assert names and all(name.startswith("waitress-") for name in names), (
            f"{_library_version('waitress')}: its task threads are named {names}; run_until_signalled"
            f" (pods.serving) looks for 'waitress-'"
        )
        assert dispatcher.queue_logger.name == "waitress.queue", (
            "QueueDepthSummary (pods.serving) filters the 'waitress.queue' logger"
        )
    finally:
        dispatcher.shutdown(timeout=2)
