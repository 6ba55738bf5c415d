"""The one exception tree of qwenproxy.

Every error a client can see is a `ProxyError`; `to_body()` gives the OpenAI error shape
and `status` the HTTP status. Third-party exceptions are translated at service boundaries.
"""

from __future__ import annotations

from typing import Any


class ProxyError(Exception):
    """Base of all errors that reach a client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.headers = headers or {}

    def to_body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# --- the client's fault -----------------------------------------------------------------


class InvalidRequestError(ProxyError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationError(ProxyError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(ProxyError):
    status = 403
    type = "permission_error"
    code = "forbidden"


class ModelNotAllowedError(PermissionDeniedError):
    """A named client key asked for a model outside its `--models` globs."""

    code = "model_not_allowed"


class NotFoundError(ProxyError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class MethodNotAllowedError(ProxyError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ClientGoneError(ProxyError):
    """The client closed its connection while the proxy waited for the upstream: the wait
    ends and the upstream connection is closed. Recorded as 499; nobody reads the body."""

    status = 499
    type = "invalid_request_error"
    code = "client_disconnected"


class ContextLengthExceededError(InvalidRequestError):
    """The prompt does not fit the model's context window (found by the proxy's own count,
    or refused so by the upstream). Each door words it the way its clients recognise:
    OpenAI's message here, Anthropic's in `anthropic_message`."""

    code = "context_length_exceeded"

    def __init__(
        self,
        prompt_tokens: int | None,
        limit: int | None,
        *,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.limit = limit
        self.detail = detail  # the upstream's own words, when it refused
        super().__init__(self._openai_message(), param="messages", headers=headers)

    def completed(self, prompt_tokens: int | None, limit: int | None) -> ContextLengthExceededError:
        """The same error with the numbers it lacked filled in."""
        return ContextLengthExceededError(
            self.prompt_tokens if self.prompt_tokens is not None else prompt_tokens,
            self.limit if self.limit is not None else limit,
            detail=self.detail,
            headers=dict(self.headers),
        )

    def _openai_message(self) -> str:
        if self.limit is not None and self.prompt_tokens is not None:
            return (
                f"This model's maximum context length is {self.limit} tokens. However, your "
                f"messages resulted in {self.prompt_tokens} tokens."
            )
        if self.limit is not None:
            return (
                f"This model's maximum context length is {self.limit} tokens. However, your "
                "messages are longer."
            )
        return "The prompt is longer than this model's maximum context length."

    def anthropic_message(self) -> str:
        if self.limit is not None and self.prompt_tokens is not None:
            return f"prompt is too long: {self.prompt_tokens} tokens > {self.limit} maximum"
        return "prompt is too long: " + (self.detail or "longer than the model's context window")


class QuotaExhaustedError(ProxyError):
    """Every key the request could use has spent a request window (pipeline/quota.py)."""

    status = 429
    type = "rate_limit_error"
    code = "quota_exhausted"


class BudgetExceededError(ProxyError):
    """The client key's budget for the current UTC day or month is spent."""

    status = 429
    type = "rate_limit_error"
    code = "budget_exceeded"


class PayloadTooLargeError(ProxyError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


# --- the upstream's answer or absence ---------------------------------------------------


class UpstreamError(ProxyError):
    """The upstream failed: 5xx, refused connection, broken stream. Maps to 502."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"


class UpstreamStatusError(UpstreamError):
    """The upstream answered with a 4xx; the client sees the same status and message."""

    type = "invalid_request_error"
    code = "upstream_rejected"


class RateLimitError(UpstreamStatusError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    type = "timeout_error"
    code = "upstream_timeout"


class ServiceUnavailableError(ProxyError):
    """The proxy cannot serve the request now (credentials, configuration). Maps to 503."""

    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class CredentialsMissingError(ServiceUnavailableError):
    code = "qwen_oauth_credentials_missing"


class LoginRequiredError(ServiceUnavailableError):
    code = "qwen_oauth_login_required"


class OAuthAccessEndedError(ServiceUnavailableError):
    code = "qwen_oauth_access_ended"


def upstream_error_for_status(
    status: int, message: str, headers: dict[str, str] | None = None
) -> ProxyError:
    """Translate an upstream HTTP error status into the error the client should see."""
    if status == 429:
        return RateLimitError(message, headers=headers)
    if 400 <= status < 500:
        return UpstreamStatusError(message, status=status, headers=headers)
    retry_after = {k: v for k, v in (headers or {}).items() if k.lower() == "retry-after"}
    return UpstreamError(f"upstream failed with HTTP {status}: {message}", headers=retry_after)
