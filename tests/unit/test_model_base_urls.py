"""Which base URLs count as the runner's model API (the runner's key goes to no other), and the
sanitised words an error may use instead of a server's answer."""

from __future__ import annotations

import errno
import socket
import ssl

import httpx
import pytest

from agentbus.common.settings import SettingsError
from agentbus.runner.agents import AgentConfigError
from agentbus.runner.agents.llm import (
    DEFAULT_PORTS,
    BaseURL,
    ChatClient,
    base_url_key,
    printable,
    same_base_url,
    status_line,
    unreachable_reason,
)
from agentbus.runner.agents.openai import OpenAIConfig, resolve, runner_key
from agentbus.runner.settings import ModelDefaults, Settings

OPENAI = "https://api.openai.com/v1"


def test_a_base_url_is_normalised_as_the_http_client_reads_it() -> None:
    assert base_url_key("HTTPS://API.OpenAI.com:443/v1/") == BaseURL(
        "https", "api.openai.com", 443, "/v1", "", "", ""
    )
    assert base_url_key("http://127.0.0.1:8000/v1").port == 8000  # type: ignore[union-attr]
    assert base_url_key("http://[::1]/v1").port == 80  # type: ignore[union-attr]
    assert base_url_key("https://bücher.example/v1").host == "xn--bcher-kva.example"  # type: ignore[union-attr]
    for bad in ("ftp://api.openai.com/v1", "https:///v1", "not a url", ""):
        assert base_url_key(bad) is None, bad


@pytest.mark.parametrize(
    "url",
    [
        OPENAI,
        "https://api.openai.com/v1/",
        "https://API.OPENAI.COM/v1",
        "HTTPS://api.openai.com/v1",
        "https://api.openai.com:443/v1",
        "https://api.openai.com/v1//",
    ],
)
def test_the_same_base_url_spelled_differently_matches(url: str) -> None:
    assert same_base_url(url, OPENAI)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.openai.com.evil.example/v1",  # a prefix of the host
        "https://api.openai.com@evil.example/v1",  # user info, then another host
        "https://api.openai.com:443@evil.example/v1",
        "https://evil.example#@api.openai.com/v1",  # the rest is a fragment
        "https://evil.example?@api.openai.com/v1",  # ... or a query
        "https://evil.example\\@api.openai.com/v1",  # user info with a backslash: still user info
        "https://user:pw@api.openai.com/v1",  # the host is right, but credentials of its own
        "http://api.openai.com/v1",  # another scheme
        "https://api.openai.com:8443/v1",  # another port
        "https://api.openai.com:80/v1",
        "https://api.openai.com/v10",  # a prefix of the path
        "https://api.openai.com/v1/chat",  # a longer path
        "https://api.openai.com/",
        "https://api.openai.com/v1?x=1",  # a query
        "https://api.openai.com./v1",  # a trailing dot: not the same name
        "https://api.openai.co/v1",
        "",
    ],
)
def test_a_look_alike_base_url_does_not_match(url: str) -> None:
    assert not same_base_url(url, OPENAI)


def test_the_request_goes_where_the_key_says() -> None:
    """The client appends `/chat/completions` to the base URL: that never moves the host or port."""
    for url in (
        "https://api.openai.com@evil.example/v1",
        "https://evil.example#@api.openai.com/v1",
        "https://evil.example\\@api.openai.com/v1",
        "http://evil.example",
        OPENAI,
    ):
        key = base_url_key(url)
        sent = httpx.URL(ChatClient(url, None).url)
        assert key is not None, url
        where = (sent.scheme, sent.raw_host.decode(), sent.port or DEFAULT_PORTS[sent.scheme])
        assert where == (key.scheme, key.host, key.port), url


def defaults(**fields: object) -> ModelDefaults:
    return ModelDefaults(api_key="sk-runner-key", model="m", **fields)  # type: ignore[arg-type]


def test_the_runner_key_goes_only_to_its_base_url_and_the_allow_list() -> None:
    d = defaults(base_url="http://10.0.0.5:8000/v1", allowed_base_urls=("https://proxy.example/openai/v1",))
    assert runner_key("http://10.0.0.5:8000/v1/", d) == "sk-runner-key"
    assert runner_key("https://PROXY.example:443/openai/v1", d) == "sk-runner-key"
    for other in (
        OPENAI,
        "http://10.0.0.5:8001/v1",
        "https://proxy.example/v1",
        "http://proxy.example/openai/v1",
    ):
        with pytest.raises(AgentConfigError, match=r"^agent_config\.base_url is not a model API"):
            runner_key(other, d)
    assert runner_key(OPENAI, defaults()) == "sk-runner-key"  # the default OPENAI_BASE_URL
    assert runner_key("http://anywhere.example/v1", ModelDefaults()) is None  # no key to protect
    assert runner_key("http://anywhere.example/v1", None) is None


def test_a_task_with_its_own_key_may_name_any_server() -> None:
    cfg = OpenAIConfig(base_url="http://gpu-box:8000/v1", api_key="sk-task")
    setup = resolve(cfg, defaults())
    assert (setup.base_url, setup.api_key) == ("http://gpu-box:8000/v1", "sk-task")
    with pytest.raises(AgentConfigError, match=r"set agent_config\.api_key"):
        resolve(OpenAIConfig(base_url="http://gpu-box:8000/v1"), defaults())
    assert resolve(OpenAIConfig(), defaults()).api_key == "sk-runner-key"


def test_the_allow_list_setting() -> None:
    env = {"OPENAI_ALLOWED_BASE_URLS": " https://a.example/v1 ,http://b:8000/v1,, "}
    assert Settings.from_env(env).model.allowed_base_urls == ("https://a.example/v1", "http://b:8000/v1")
    assert Settings.from_env({}).model.allowed_base_urls == ()
    for bad in ("a.example/v1", "https://a.example/v1,ftp://b", ", ,"):
        with pytest.raises(
            SettingsError, match=r"^OPENAI_ALLOWED_BASE_URLS=.*: must be comma-separated http"
        ):
            Settings.from_env({"OPENAI_ALLOWED_BASE_URLS": bad})


def test_status_lines_and_reasons_use_fixed_words_only() -> None:
    assert status_line(401) == "401 Unauthorized"
    assert status_line(503) == "503 Service Unavailable"
    assert status_line(599) == "599"
    assert printable("a\x1b[31mb\nc\u202ed") == "a?[31mb?c?d"
    assert printable("x" * 500, 20) == "x" * 17 + "..."
    refused = httpx.ConnectError("All connection attempts failed")
    refused.__cause__ = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('10.0.0.5', 9)")
    assert unreachable_reason(refused) == "Connection refused"
    unknown = httpx.ConnectError("x")
    unknown.__cause__ = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    assert unreachable_reason(unknown) == "Name or service not known"
    tls = httpx.ConnectError("x")
    tls.__cause__ = ssl.SSLCertVerificationError(1, "certificate verify failed: Hostname mismatch, 'evil'")
    tls.__cause__.reason = "CERTIFICATE_VERIFY_FAILED"
    assert unreachable_reason(tls) == "TLS CERTIFICATE_VERIFY_FAILED"
    assert unreachable_reason(httpx.RemoteProtocolError("illegal status line: bytearray(b'SSH-2.0')")) == ""
