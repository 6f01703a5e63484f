"""The rules of webhooks that need no server: which URLs are accepted (exactly what the schema's
pattern allows), the backoff, the signature and the body."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar.exceptions import ValidationException

from agentbus.contracts import encode
from agentbus.contracts import events as ev
from agentbus.gateway.deliveries import backoff, body_of, signature
from agentbus.gateway.store.webhooks import Claimed, delivery_rows
from agentbus.gateway.webhooks import URL_PATTERN, checked_url


@settings(max_examples=500, deadline=None)
@given(st.from_regex(URL_PATTERN))
def test_every_url_the_schema_allows_is_accepted(url: str) -> None:
    if 8 <= len(url) <= 2048:
        checked_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://h.example/",
        "http:///x",
        "http://u:p@h.example/",
        "http://h.example/#f",
        "http://h.example:0/",
        "http://h.example:65536/",
        "http://h.example/a b",
        "http://h.example/\x7f",
        "file:///etc/passwd",
    ],
)
def test_urls_deliveries_cannot_go_to_are_refused(url: str) -> None:
    assert not re.search(URL_PATTERN, url)
    with pytest.raises(ValidationException):
        checked_url(url)


def test_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff(n, 1.0, 10.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_the_signature_is_the_hmac_of_the_body_sent() -> None:
    claimed = Claimed(
        "d1", "w1", "completion", '{"seq": 3, "event_type": "completion"}', 0, "http://h/", "k" * 16
    )
    body = body_of(claimed)
    assert json.loads(body) == {"seq": 3, "event_type": "completion", "webhook_id": "w1", "delivery_id": "d1"}
    expected = hmac.new(b"k" * 16, body, hashlib.sha256).hexdigest()
    assert signature("k" * 16, body) == f"sha256={expected}"


def test_deliveries_go_to_the_webhooks_asking_for_the_type() -> None:
    e = ev.AnalysisStart(id="e", seq=1, timestamp=datetime.now(UTC), task_id="t", run_id="r")
    subscribers = [("all", ["*"]), ("some", '["analysis_start"]'), ("none", ["completion"])]
    rows = delivery_rows(subscribers, [(e, encode(e))], datetime.now(UTC))
    assert sorted(r.webhook_id for r in rows) == ["all", "some"]
    again = delivery_rows(subscribers, [(e, encode(e))], datetime.now(UTC))
    assert {r.id for r in rows} == {r.id for r in again}  # the same (webhook, event): the same id
