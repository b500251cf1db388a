"""Schemathesis hooks for raftcron's contract test (scripts/schemathesis.sh).

- The string formats the document names but JSON Schema cannot spell out (`cron`,
  `iana-time-zone`, `http-url`) get strategies of valid values; the server refuses
  others with 400.
- An `Idempotency-Key` that fits the schema is made unique per request, as a correct
  client makes it: reusing one key for two different requests is refused (422) by
  design, which the schema cannot express.
"""

import uuid

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format(
    "cron",
    st.sampled_from(
        [
            "*/5 * * * *",
            "0 2 * * *",
            "0 */6 * * MON-FRI",
            "30 4 1,15 * *",
            "*/10 * * * * *",
            "@daily",
            "@hourly",
            "@every 90s",
        ]
    ),
)
schemathesis.openapi.format(
    "http-url",
    st.sampled_from(["http://127.0.0.1:9/", "https://example.com/hook", "http://localhost:8080/api/health"]),
)
schemathesis.openapi.format(
    "iana-time-zone",
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Eucla"]),
)


@schemathesis.hook
def before_call(context, case, kwargs):
    headers = case.headers or {}
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and 1 <= len(key) <= 255 and key.isascii() and key.strip() == key and key.isprintable():
        headers["Idempotency-Key"] = f"st-{uuid.uuid4().hex}"
