"""PodsFlask skips Flask's searches for request hooks while the app has none, and
remembers which functions are coroutines (pods/api/application.py): hooks added
to it still run as Flask runs them, whatever kind of callable they are, and a
function made per request is not kept."""

import dataclasses
import functools
import gc
import weakref

from flask import after_this_request

from pods.api import auth as auth_module

POD_LIST = "/agent/v0/pods"


@dataclasses.dataclass
class AddHeader:
    """A callable object with __eq__ and so no __hash__, as a dataclass is."""

    name: str

    def __call__(self, response):
        response.headers[self.name] = "yes"
        return response


def test_hooks_of_every_kind_run_in_flasks_order(app, client, headers):
    ran = []
    app.url_value_preprocessors.setdefault(None, []).append(lambda endpoint, values: ran.append("preprocess"))
    app.before_request_funcs.setdefault(None, []).append(lambda: ran.append("before"))
    app.after_request_funcs.setdefault(None, []).append(AddHeader("X-After"))
    app.teardown_request_funcs.setdefault(None, []).append(lambda exc: ran.append(("teardown", exc)))

    response = client.get(POD_LIST, headers=headers)

    assert response.status_code == 200 and response.headers["X-After"] == "yes"
    assert ran == ["preprocess", "before", ("teardown", None)]


def test_a_before_request_hook_that_answers_is_the_answer(app, client, headers):
    app.before_request_funcs.setdefault(None, []).append(lambda: ({"held": True}, 418))
    response = client.get(POD_LIST, headers=headers)
    assert (response.status_code, response.json) == (418, {"held": True})


def test_after_this_request_functions_run_and_are_not_kept(app, client, headers, monkeypatch):
    verify, kept = auth_module.auth.verify_token_callback, []

    class Captured:
        pass

    def verify_and_register(token):
        captured = Captured()
        kept.append(weakref.ref(captured))

        @after_this_request
        def mark(response, captured=captured):
            response.headers["X-This-Request"] = "yes"
            return response

        return verify(token)

    monkeypatch.setattr(auth_module.auth, "verify_token_callback", verify_and_register)
    for _ in range(20):
        assert client.get(POD_LIST, headers=headers).headers["X-This-Request"] == "yes"
    gc.collect()
    assert [ref() for ref in kept] == [None] * 20


def test_an_unhashable_teardown_hook_is_called(app, client, headers):
    seen = []

    @dataclasses.dataclass
    class Teardown:
        def __call__(self, exc):
            seen.append(exc)

    app.teardown_request_funcs.setdefault(None, []).append(Teardown())
    assert client.get(POD_LIST, headers=headers).status_code == 200
    assert seen == [None]


def test_a_session_interface_put_in_place_of_none_is_saved_to(app, client, headers):
    from flask.sessions import SecureCookieSessionInterface

    saved = []

    class Recording(SecureCookieSessionInterface):
        def save_session(self, app, session, response):
            saved.append(response.status_code)

    app.secret_key = "test"
    app.session_interface = Recording()
    assert client.get(POD_LIST, headers=headers).status_code == 200
    assert saved == [200]


def test_a_function_inspect_reads_beyond_its_code_gets_flasks_own_answer(app, monkeypatch):
    """inspect.iscoroutinefunction also reads a function's coroutine mark (3.12+)
    and the partialmethod it stands for (3.13+, one code object for all): such a
    function is never answered from what its code object gave before."""
    from flask import Flask

    asked = []
    monkeypatch.setattr(Flask, "ensure_sync", lambda self, func: asked.append(func) or func)

    def plain(response):
        return response

    def marked(response):
        return response

    marked._is_coroutine_marker = object()
    stands_for = functools.partialmethod(plain)
    as_partialmethod = type("Hooks", (), {"hook": stands_for}).hook

    for func in (plain, plain, marked, marked, as_partialmethod, as_partialmethod):
        assert app.ensure_sync(func) is func
    assert asked == [marked, marked, as_partialmethod, as_partialmethod]
