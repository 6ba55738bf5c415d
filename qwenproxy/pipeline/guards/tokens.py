"""Prompt token counts with Qwen's own vocabulary.

Qwen2, Qwen2.5, Qwen3 and Qwen3-Coder share one byte-level BPE vocabulary of 151,643
regular tokens (the Qwen2 and Qwen3 technical reports, arXiv:2407.10671 and 2505.09388).
It ships as `dashscope/resources/qwen.tiktoken` in Alibaba's `dashscope` PyPI package
(Apache-2.0; version 2.0.2 checked); a gzipped copy lives in qwenproxy/resources/ (see the
NOTICE there and the README for why it is vendored). The pre-tokenization rule is the one
of Qwen2's `tokenizer.json` / transformers' `tokenization_qwen2.py` PRETOKENIZE_REGEX (the
same in dashscope's `tokenizers/qwen_tokenizer.py`): single digits, letters with one
leading non-letter, symbol runs with their newlines. Text is NFC-normalised first, as
Qwen2's tokenizer does.

A chat prompt is counted as Qwen's chat template renders it (Qwen3's, ChatML):
`<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, the tool definitions in the
system turn, tool calls as `<tool_call>` JSON, tool results as `<tool_response>` in a user
turn, and `<|im_start|>assistant\\n` for the answer. Images count at the DashScope
default cap (IMAGE_TOKENS, below).

Loading the vocabulary takes ~0.6 s of CPU: it happens once per process, on first use or
in `warm_up()` (a real OS thread, so the gevent hub keeps running). Counting a long
prompt runs in gevent's thread pool when the caller is a greenlet (tiktoken releases the
GIL while it encodes), so a 100k-token count does not hold the hub.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import logging
import threading
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from qwenproxy.background import run_off_hub, start_in_background
from qwenproxy.pipeline.messages.content import ANY_TYPE, is_text_part

log = logging.getLogger(__name__)

# the package root: qwenproxy/pipeline/guards/tokens.py -> qwenproxy/
VOCAB_PATH = Path(__file__).resolve().parents[2] / "resources" / "qwen.tiktoken.gz"
VOCAB_SIZE = 151_643
# transformers' Qwen2 PRETOKENIZE_REGEX, as in Qwen2's tokenizer.json.
PRETOKENIZE_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = {"<|endoftext|>": 151_643, "<|im_start|>": 151_644, "<|im_end|>": 151_645}

# Images: Model Studio's Qwen-VL rule ("Image and video understanding",
# https://www.alibabacloud.com/help/en/model-studio/vision): one token per 28x28 pixels
# (32x32 on Qwen3-VL), at least 4 and by default at most 1,280 tokens an image, plus the
# two <|vision_start|>/<|vision_end|> tokens. Images are not decoded here, so each counts
# at that default cap: an upper bound unless `vl_high_resolution_images` is on.
IMAGE_TOKENS = 1_280 + 2

# Per message: <|im_start|>, <|im_end|> and the "\n" after it (the role and the "\n"
# after it are counted with the content).
MESSAGE_OVERHEAD = 3
REPLY_PRIMER = 3  # <|im_start|>assistant\n
# Texts longer than this are encoded in pieces cut at pre-token boundaries (tiktoken can
# run out of stack on one huge piece).
PIECE_CHARS = 64_000

# Qwen3's chat template puts the tool definitions into the system turn like this (the
# Hermes-style block of Qwen2.5/Qwen3's tokenizer_config.json chat_template).
TOOLS_HEAD = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

def _real_lock() -> Any:
    """A lock of the OS threads (gevent's patched one would be wrong here: the code that
    takes it runs in real threads, the thread pool's or warm_up's)."""
    try:
        from gevent.monkey import get_original

        return get_original("_thread", "allocate_lock")()
    except ImportError:  # pragma: no cover
        return threading.Lock()


def _split_long(text: str) -> Iterable[str]:
    """Pieces of at most ~PIECE_CHARS characters, cut after a newline that a
    non-whitespace character follows: no Qwen pre-token spans such a place, so the pieces
    encode to exactly the tokens of the whole."""
    start, n = 0, len(text)
    while n - start > PIECE_CHARS:
        cut = text.rfind("\n", start, start + PIECE_CHARS)
        while cut > start and text[cut + 1 : cut + 2].isspace():
            cut = text.rfind("\n", start, cut)
        if cut <= start:  # no safe place: one long line, encoded whole
            break
        yield text[start : cut + 1]
        start = cut + 1
    yield text[start:]


_ENCODINGS: dict[Path, tuple[Any, int]] = {}  # one per vocabulary file and process
_LOAD_LOCK = _real_lock()


def _load_encoding(path: Path) -> tuple[Any, int]:
    """(tiktoken Encoding, longest token in bytes) of a gzipped .tiktoken file."""
    import tiktoken

    ranks: dict[bytes, int] = {}
    with gzip.open(path, "rb") as handle:
        for line in handle.read().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    if len(ranks) != VOCAB_SIZE:
        raise RuntimeError(f"{path} holds {len(ranks)} tokens, not {VOCAB_SIZE}")
    encoding = tiktoken.Encoding(
        "qwen",
        pat_str=PRETOKENIZE_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=SPECIAL_TOKENS,
    )
    return encoding, max(len(token) for token in ranks)


class QwenTokenizer:
    """Qwen's BPE over tiktoken; the vocabulary is loaded once per process (thread-safe)
    on first use, and shared by every tokenizer of that file."""

    def __init__(self, vocab_path: Path = VOCAB_PATH) -> None:
        self._vocab_path = vocab_path
        self._encoding: Any = None
        self.max_token_bytes = 0

    def encoding(self) -> Any:
        if self._encoding is None:
            loaded = _ENCODINGS.get(self._vocab_path)
            if loaded is None:
                with _LOAD_LOCK:
                    loaded = _ENCODINGS.get(self._vocab_path)
                    if loaded is None:
                        loaded = _ENCODINGS[self._vocab_path] = _load_encoding(self._vocab_path)
            self._encoding, self.max_token_bytes = loaded
        return self._encoding

    def warm_up(self) -> None:
        """Load the vocabulary in a real thread now, so the first request need not."""
        if self._encoding is not None:
            return

        def load() -> None:
            try:
                self.encoding()
            except Exception:
                log.exception("loading Qwen's vocabulary failed")

        start_in_background(load, "qwenproxy-vocab")

    def count(self, text: str) -> int:
        if not text:
            return 0
        if not text.isascii() and not unicodedata.is_normalized("NFC", text):
            text = unicodedata.normalize("NFC", text)
        encode = self.encoding().encode_ordinary
        if len(text) <= PIECE_CHARS:
            return len(encode(text))
        return sum(len(encode(piece)) for piece in _split_long(text))

    def encode(self, text: str) -> list[int]:
        text = unicodedata.normalize("NFC", text)
        return self.encoding().encode_ordinary(text)


def _json(value: Any) -> str:
    # The chat template's tojson: ", " and ": " separators, non-ASCII kept.
    import json

    return json.dumps(value, ensure_ascii=False)


def _content_text(content: Any) -> tuple[str, int]:
    """(text of a message's content, number of images in it)."""
    if content is None:
        return "", 0
    if isinstance(content, str):
        return content, 0
    if not isinstance(content, list):
        return _json(content), 0
    texts, images = [], 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if is_text_part(part, ANY_TYPE):
            texts.append(part["text"])
        elif kind in ("image_url", "input_image", "image"):
            images += 1
        elif kind in ("video_url", "video", "input_audio", "file"):
            images += 1  # counted like an image: the proxy cannot see inside
        else:
            texts.append(_json(part))
    return "".join(texts), images


def _tool_call_text(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return ""
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            pass
    body = _json({"name": function.get("name"), "arguments": arguments})
    return f"<tool_call>\n{body}\n</tool_call>"


# Counts of long message texts, by digest: an agent resends its whole history every turn,
# so only the new turns need the tokenizer. Entries are ~60 bytes.
CACHE_MIN_CHARS = 2_048
CACHE_ENTRIES = 20_000


class PromptCounter:
    """Token counts of chat-completions prompts, as a Qwen model sees them."""

    def __init__(self, tokenizer: QwenTokenizer | None = None) -> None:
        self.tokenizer = tokenizer or QwenTokenizer()
        self._cache: dict[bytes, int] = {}

    def _count_cached(self, text: str) -> int:
        if len(text) < CACHE_MIN_CHARS:
            return self.tokenizer.count(text)
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        found = self._cache.get(key)
        if found is None:
            found = self.tokenizer.count(text)
            if len(self._cache) >= CACHE_ENTRIES:
                for old in list(self._cache)[: CACHE_ENTRIES // 2]:  # the oldest half
                    self._cache.pop(old, None)
            self._cache[key] = found
        return found

    def warm_up(self) -> None:
        self.tokenizer.warm_up()

    # --- exact ------------------------------------------------------------------------

    def count_text(self, text: str) -> int:
        return self.tokenizer.count(text)

    def count_chat(self, messages: list[Any], tools: Any = None) -> int:
        """Tokens of the prompt Qwen's chat template builds from `messages` and `tools`,
        including the `<|im_start|>assistant\\n` that starts the answer."""
        count = self._count_cached
        total = REPLY_PRIMER
        tool_defs = [t for t in tools if isinstance(t, dict)] if isinstance(tools, list) else []
        system_done = False
        for index, message in enumerate(messages):
            if not isinstance(message, dict):
                continue
            role = str(message.get("role") or "user")
            text, images = _content_text(message.get("content"))
            total += images * IMAGE_TOKENS
            if role == "tool":
                previous = messages[index - 1] if index else None
                opens = not (isinstance(previous, dict) and previous.get("role") == "tool")
                piece = f"\n<tool_response>\n{text}\n</tool_response>"
                if opens:  # a run of tool results shares one user turn
                    total += MESSAGE_OVERHEAD
                    piece = "user" + piece
                total += count(piece)
                continue
            if role in ("system", "developer") and not system_done and index == 0:
                system_done = True
                if tool_defs:
                    text += TOOLS_HEAD + "".join("\n" + _json(t) for t in tool_defs) + TOOLS_TAIL
                role = "system"
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                text += "".join("\n" + _tool_call_text(c) for c in calls)
            total += MESSAGE_OVERHEAD + count(f"{role}\n{text}")
        if tool_defs and not system_done:
            text = TOOLS_HEAD.lstrip("\n") + "".join("\n" + _json(t) for t in tool_defs)
            total += MESSAGE_OVERHEAD + count("system\n" + text + TOOLS_TAIL)
        return total

    def count_chat_off_hub(self, messages: list[Any], tools: Any = None) -> int:
        return run_off_hub(self.count_chat, messages, tools)

    # --- cheap bound ------------------------------------------------------------------

    @staticmethod
    def upper_bound(messages: list[Any], tools: Any = None) -> int:
        """A bound no exact count exceeds, from bytes alone (~0.3 ms for 400 KB): byte-level
        BPE makes at most one token per byte of text, and the JSON around each message,
        tool call and tool definition has more bytes than the template's tokens around
        them. Images add IMAGE_TOKENS each; the template's fixed texts are added whole."""
        raw = orjson.dumps(messages)
        bound = len(raw) + REPLY_PRIMER + MESSAGE_OVERHEAD
        images = raw.count(b'"image_url"') + raw.count(b'"input_audio"') + raw.count(b'"video_url"')
        bound += images * IMAGE_TOKENS
        if tools:
            bound += len(orjson.dumps(tools)) + len(TOOLS_HEAD) + len(TOOLS_TAIL) + 64
        bound += 16 * raw.count(b'"arguments"') + 8 * raw.count(b'"tool"')
        return bound
