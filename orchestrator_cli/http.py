"""HTTP to the Orchestrator Service: one session, a timeout on every call, typed failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import requests

DEFAULT_URL = "http://127.0.0.1:5003"
DEFAULT_TIMEOUT = 10.0
# An unreachable host must fail in seconds, whatever the read timeout is.
CONNECT_TIMEOUT = 3.0

# Exit codes, distinct so scripts can tell the failures apart (click uses 2 for bad usage).
EXIT_OK = 0
EXIT_WORK_FAILED = 1
EXIT_USAGE = 2
EXIT_CANNOT_CONNECT = 3
EXIT_REFUSED = 4
EXIT_TIMED_OUT = 5


class ClientError(Exception):
    """A failure the command reports with a message and an exit code."""

    exit_code = EXIT_REFUSED

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CannotConnect(ClientError):
    """The service did not answer: wrong URL, not running, or too slow."""

    exit_code = EXIT_CANNOT_CONNECT


class Refused(ClientError):
    """The service answered with an error status."""

    exit_code = EXIT_REFUSED

    def __init__(self, status: int, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class Client:
    """Calls the API at `base_url`, sending `Authorization: Bearer <api_key>` when a key is set."""

    def __init__(
        self, base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.session.headers["User-Agent"] = "orchestrator-cli"
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def stream(self, path: str, accept: str) -> Iterator[bytes]:
        """The body of a 2xx GET as it arrives, in chunks (raises like `request` otherwise)."""
        url = f"{self.base_url}{path}"
        try:
            response = self.session.get(
                url,
                headers={"Accept": accept},
                stream=True,
                timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout),
            )
        except requests.Timeout:
            raise CannotConnect(
                f"{self.base_url} did not answer GET {path} within {self.timeout:g} s."
            ) from None
        except requests.RequestException as error:
            raise CannotConnect(f"Cannot connect to {self.base_url}: {error}") from None
        with response:
            if not response.ok:
                try:
                    document = response.json()
                except ValueError:
                    document = None
                raise Refused(response.status_code, _error_message(response, document), document)
            try:
                yield from response.iter_content(chunk_size=65536)
            except requests.RequestException as error:
                raise CannotConnect(f"The answer to GET {path} broke off: {error}") from None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The decoded JSON answer of a 2xx; raises CannotConnect or Refused otherwise."""
        url = f"{self.base_url}{path}"
        try:
            response = self.session.request(
                method, url, json=body, timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout)
            )
        except requests.Timeout:
            raise CannotConnect(
                f"{self.base_url} did not answer {method} {path} within {self.timeout:g} s."
            ) from None
        except requests.ConnectionError as error:
            raise CannotConnect(
                f"Cannot connect to {self.base_url}: {_reason(error)}. "
                "Is the service running? Set --url or ORCHESTRATOR_URL."
            ) from None
        except requests.RequestException as error:
            raise CannotConnect(f"Request to {url} failed: {error}") from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.ok:
            if document is None and response.content:
                raise Refused(
                    response.status_code, f"{method} {path} answered something that is not JSON."
                )
            return document
        raise Refused(response.status_code, _error_message(response, document), document)


def _reason(error: requests.ConnectionError) -> str:
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "No route to host"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else "connection failed"


def _error_message(response: requests.Response, document: Any) -> str:
    """The service's `{"error": {...}}` as one readable line (plus field messages)."""
    status = response.status_code
    error = document.get("error") if isinstance(document, dict) else None
    if not isinstance(error, dict):
        snippet = response.text.strip().replace("\n", " ")[:200]
        return f"HTTP {status} {response.reason}: {snippet or 'no body'}"
    message = f"HTTP {status} ({error.get('code', 'error')}): {error.get('message', '')}"
    fields = error.get("fields")
    if isinstance(fields, dict):
        for name, messages in fields.items():
            message += f"\n  {name}: {_flatten(messages)}"
    return message


def _flatten(messages: Any) -> str:
    if isinstance(messages, list):
        return " ".join(_flatten(item) for item in messages)
    if isinstance(messages, dict):
        return "; ".join(f"{key}: {_flatten(value)}" for key, value in messages.items())
    return str(messages) if not isinstance(messages, str) else messages


def dumps(document: Any) -> str:
    """JSON for --json output: indented, keys in the service's order."""
    return json.dumps(document, indent=2)
