#!/usr/bin/env python3
"""A GPU inference function for fngate: a decoder-only transformer LM with random weights.

Nothing is downloaded: the model is built in code from a seed (the GPU machine has no network),
so start-up still pays what a real model function pays - building the weights in host memory,
copying them to the GPU and a warm-up forward pass - and that is its cold start. Only then does
it open its port and print `listening on 127.0.0.1:PORT`.

HTTP/1.1 on 127.0.0.1:$PORT (keep-alive, since the gateway pools connections):

  GET  /health    200 {"status":"ok"} (the port only opens once the model is loaded)
  GET  /stats     counters, batch sizes, model size, device, load time, memory fraction
  POST /generate  {"prompt": "...", "max_tokens": N, "stream": bool, "temperature": T}
                  stream=true: SSE, one `data: {"token":..,"id":..,"index":i}` event per token
                  (chunked, flushed per token), then `data: [DONE]`; otherwise one JSON
                  {"tokens": [...], "text": "...", "usage": {...}}.

Dynamic batching: one worker thread owns the model. Requests wait in a bounded queue (503 when
full); between decode steps the worker admits waiting requests into free batch slots (prefill,
one sequence at a time), then runs one decode step for every active sequence together, each with
its own KV cache slot and position (batched attention over the longest active context with a
per-sequence mask). Sequences join and leave the batch between steps. When the worker is idle,
the first arrival waits up to --batch-wait-ms for companions so a burst starts as one batch.

GPU environment set by fngate: CUDA_VISIBLE_DEVICES (handled by CUDA itself), and the
instance's memory share, FNGATE_GPU_MEMORY_FRACTION (or FNGATE_GPU_MEMORY_GB over
FNGATE_GPU_CARD_MEMORY_GB), applied with torch.cuda.set_per_process_memory_fraction.

Python 3.10+, PyTorch, standard library otherwise. `--size tiny --device cpu` runs anywhere.
"""

import time

# Taken before importing torch so /stats can split the cold start into import and model load.
PROCESS_START = time.monotonic()
PROCESS_START_BOOT = time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") \
    else None

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import queue  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

IMPORTED = time.monotonic()

# Model presets. "base" is ~270M parameters (~0.5 GB in bf16): a few seconds to build and load
# on a GPU host. "tiny" is for CPU smoke tests.
SIZES = {
    "tiny": dict(layers=2, d_model=64, heads=4, vocab=512, max_context=256),
    "small": dict(layers=6, d_model=512, heads=8, vocab=8192, max_context=1024),
    "base": dict(layers=16, d_model=1024, heads=16, vocab=32000, max_context=2048),
}

BOS = 0                      # prepended to every prompt so an empty prompt is still one token
DEFAULT_MAX_TOKENS = 64
MAX_BODY = 64 * 1024         # request body bytes (413 past it)
MAX_HEAD = 16 * 1024         # request line + headers (431 past it)
KEEPALIVE_IDLE_S = 75        # longer than the gateway's 60 s pool idle, so the gateway closes first
SHUTDOWN_GRACE_S = 5.0       # on SIGTERM: time for requests in progress to finish
MAX_TEMPERATURE = 10.0


# ---- the model ---------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-LayerNorm transformer block: multi-head self-attention and a GELU MLP."""

    def __init__(self, d_model, heads):
        super().__init__()
        self.heads = heads
        self.head_dim = d_model // heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.up = nn.Linear(d_model, 4 * d_model)
        self.down = nn.Linear(4 * d_model, d_model)

    def _qkv(self, x):
        """[B, T, d] -> q, k, v, each [B, heads, T, head_dim]."""
        b, t, _ = x.shape
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, self.head_dim)
        return qkv.permute(2, 0, 3, 1, 4).unbind(0)

    def _finish(self, x, attn):
        b, h, t, d = attn.shape
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, h * d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))

    def prefill(self, x, cache_k, cache_v, slot):
        """A whole prompt of one sequence ([1, T, d]), written to cache slot `slot` at 0..T-1."""
        q, k, v = self._qkv(x)
        t = x.shape[1]
        cache_k[slot, :, :t] = k[0]
        cache_v[slot, :, :t] = v[0]
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def decode(self, x, cache_k, cache_v, slots, pos, length, mask):
        """One token for each of B sequences ([B, 1, d]); sequence i lives in cache slot
        slots[i] and its token sits at position pos[i]; it attends to positions 0..pos[i]."""
        q, k, v = self._qkv(x)
        # cache[slots, :, pos] is [B, heads, head_dim]: each sequence writes its own position.
        cache_k[slots, :, pos] = k[:, :, 0]
        cache_v[slots, :, pos] = v[:, :, 0]
        keys = cache_k[slots, :, :length]
        values = cache_v[slots, :, :length]
        return self._finish(x, F.scaled_dot_product_attention(q, keys, values, attn_mask=mask))


class RandomLM(nn.Module):
    """GPT-style decoder with learned positions and random (seeded) weights."""

    def __init__(self, layers, d_model, heads, vocab, max_context):
        super().__init__()
        self.max_context = max_context
        self.tok_emb = nn.Embedding(vocab, d_model)
        self.pos_emb = nn.Embedding(max_context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d_model)
        # Not tied to tok_emb: with random weights a tied head makes greedy decoding repeat the
        # last token forever.
        self.head = nn.Linear(d_model, vocab, bias=False)

    def prefill(self, tokens, slot, cache):
        """tokens: [T] of one sequence -> logits [vocab] for the token after it."""
        pos = torch.arange(tokens.shape[0], device=tokens.device)
        x = (self.tok_emb(tokens) + self.pos_emb(pos))[None]
        for block, cache_k, cache_v in zip(self.blocks, cache.k, cache.v):
            x = block.prefill(x, cache_k, cache_v, slot)
        return self.head(self.ln_f(x[0, -1]))

    def decode(self, tokens, slots, pos, length, cache):
        """tokens, slots, pos: [B] -> logits [B, vocab]. `length` (max(pos) + 1, passed in so
        the GPU need not be synchronised to learn it) bounds attention to the longest active
        context; the mask hides each shorter sequence's positions past its own."""
        mask = (torch.arange(length, device=pos.device)[None, :] <= pos[:, None])[:, None, None, :]
        x = (self.tok_emb(tokens) + self.pos_emb(pos))[:, None, :]
        for block, cache_k, cache_v in zip(self.blocks, cache.k, cache.v):
            x = block.decode(x, cache_k, cache_v, slots, pos, length, mask)
        return self.head(self.ln_f(x[:, 0]))


class KVCache:
    """Keys and values for `slots` sequences of up to `max_context` tokens, per layer:
    k[layer] and v[layer] are [slots, heads, max_context, head_dim]. Allocated once at start-up
    so a full batch can never run out of memory mid-request."""

    def __init__(self, layers, slots, heads, head_dim, max_context, device, dtype):
        shape = (layers, slots, heads, max_context, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)

    def nbytes(self):
        return 2 * self.k.numel() * self.k.element_size()


# ---- tokens ------------------------------------------------------------------------------------

def tokenize(prompt, vocab):
    """Trivial byte tokenizer: BOS, then each UTF-8 byte mod vocab."""
    return [BOS] + [b % vocab for b in prompt.encode("utf-8")]


def build_token_texts(vocab):
    """Readable text per token id: consonant-vowel syllables spelling the id in base 75, so
    generated text looks like words (" kalo mesi") rather than byte soup."""
    syllables = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
    texts = []
    for token in range(vocab):
        word, n = "", token
        while True:
            word += syllables[n % len(syllables)]
            n //= len(syllables)
            if n == 0:
                break
        texts.append(" " + word)
    return texts


# ---- the batching engine -----------------------------------------------------------------------

class Request:
    """One /generate call. The HTTP side reads `events`: a token id (int) per generated token,
    then None when done, or an error message (str) instead. The worker fills it."""

    def __init__(self, tokens, max_tokens, temperature):
        self.tokens = tokens
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.events = asyncio.Queue()
        # Set by the HTTP side when the client is gone; the worker then frees the slot.
        self.cancelled = False
        # Worker-side decode state.
        self.slot = -1
        self.pos = 0          # position of `last` in the sequence, i.e. where it is decoded
        self.last = 0         # the latest generated token, the next decode input
        self.generated = 0


class Engine:
    """Owns the model on its own thread; the asyncio thread only submits and reads events."""

    def __init__(self, model, cache, device, max_batch, max_queue, batch_wait_s, seed, loop):
        self.model = model
        self.cache = cache
        self.device = device
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.loop = loop
        self.pending = queue.Queue(maxsize=max_queue)
        self.active = []
        self.free_slots = list(range(max_batch - 1, -1, -1))
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.stopping = threading.Event()
        self.draining = False   # set on SIGTERM: new requests get 503 while the rest finish
        self.thread = threading.Thread(target=self._run, name="engine", daemon=True)
        # Counters for /stats (written by the worker only; reads from the other thread are
        # plain int reads under the GIL).
        self.served = 0
        self.failed = 0
        self.rejected = 0
        self.tokens = 0
        self.steps = 0
        self.max_batch_seen = 0

    def start(self):
        self.thread.start()

    def submit(self, request):
        """Queue a request; False when the queue is full or the server is stopping (the caller
        answers 503)."""
        if self.draining:
            self.rejected += 1
            return False
        try:
            self.pending.put_nowait(request)
            return True
        except queue.Full:
            self.rejected += 1
            return False

    def busy(self):
        return bool(self.active) or not self.pending.empty()

    def stop(self, timeout):
        self.stopping.set()
        self.thread.join(timeout)

    @torch.inference_mode()
    def warm_up(self):
        """One prefill and one full-width decode step, so the first request pays no lazy
        initialisation (CUDA context, kernel selection, allocator growth)."""
        prompt = torch.tensor(tokenize("warm up", self.model.tok_emb.num_embeddings),
                              device=self.device)
        self.model.prefill(prompt, 0, self.cache)
        n, length = self.max_batch, prompt.shape[0]
        self.model.decode(torch.zeros(n, dtype=torch.long, device=self.device),
                          torch.arange(n, device=self.device),
                          torch.full((n,), length, device=self.device), length + 1, self.cache)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- worker thread --

    def _run(self):
        with torch.inference_mode():
            while not self.stopping.is_set():
                self._admit()
                if not self.active:
                    continue
                try:
                    self._step()
                except Exception as exc:  # e.g. CUDA out of memory: fail this batch, keep serving
                    print(f"engine error: {exc!r}", file=sys.stderr, flush=True)
                    for request in list(self.active):
                        self._finish(request, f"model error: {exc}")
        # Shutting down: nobody will run what is still here.
        for request in list(self.active):
            self._finish(request, "server shutting down")
        while True:
            try:
                self._finish(self.pending.get_nowait(), "server shutting down")
            except queue.Empty:
                break

    def _admit(self):
        """Move waiting requests into free slots and prefill them."""
        free = len(self.free_slots)
        new = []
        if not self.active:
            # Idle: block (briefly, to notice a stop) for one request, then give companions a
            # short window so a burst of arrivals decodes as one batch from its first step.
            try:
                new.append(self.pending.get(timeout=0.2))
            except queue.Empty:
                return
            deadline = time.monotonic() + self.batch_wait_s
            while len(new) < free and (remaining := deadline - time.monotonic()) > 0:
                try:
                    new.append(self.pending.get(timeout=remaining))
                except queue.Empty:
                    break
        # A batch is running: take only what is already waiting, never stall the running ones.
        while len(new) < free:
            try:
                new.append(self.pending.get_nowait())
            except queue.Empty:
                break
        for request in new:
            if request.cancelled:
                continue
            request.slot = self.free_slots.pop()
            self.active.append(request)
            try:
                tokens = torch.tensor(request.tokens, device=self.device)
                logits = self.model.prefill(tokens, request.slot, self.cache)
                request.pos = len(request.tokens)
                self._emit([request], self._sample(logits[None], [request]))
            except Exception as exc:
                print(f"engine error: {exc!r}", file=sys.stderr, flush=True)
                self._finish(request, f"model error: {exc}")

    def _step(self):
        """One decode step for every active sequence."""
        for request in [r for r in self.active if r.cancelled]:
            self._finish(request, None)
        batch = self.active
        if not batch:
            return
        self.max_batch_seen = max(self.max_batch_seen, len(batch))
        tokens = torch.tensor([r.last for r in batch], device=self.device)
        slots = torch.tensor([r.slot for r in batch], device=self.device)
        pos = torch.tensor([r.pos for r in batch], device=self.device)
        length = max(r.pos for r in batch) + 1
        logits = self.model.decode(tokens, slots, pos, length, self.cache)
        for request in batch:
            request.pos += 1
        self.steps += 1
        self._emit(list(batch), self._sample(logits, batch))

    def _sample(self, logits, batch):
        """Greedy for temperature 0, else a draw from the engine's seeded generator (so a run
        is reproducible for the same arrival order)."""
        chosen = logits.argmax(-1)
        temperatures = [r.temperature for r in batch]
        if any(t > 0 for t in temperatures):
            temps = torch.tensor([t if t > 0 else 1.0 for t in temperatures],
                                 device=logits.device)
            probs = F.softmax(logits.float() / temps[:, None], dim=-1)
            drawn = torch.multinomial(probs, 1, generator=self.generator)[:, 0]
            use = torch.tensor([t > 0 for t in temperatures], device=logits.device)
            chosen = torch.where(use, drawn, chosen)
        return chosen.tolist()

    def _emit(self, batch, tokens):
        """Hand each request its token (one wake-up of the event loop for the whole batch)
        and retire the sequences that are complete."""
        out = []
        for request, token in zip(batch, tokens):
            out.append((request, token))
            request.last = token
            request.generated += 1
            self.tokens += 1
            if request.generated >= request.max_tokens:
                out.append((request, None))
                self._release(request)
                self.served += 1
        self.loop.call_soon_threadsafe(_deliver, out)

    def _finish(self, request, error):
        """End a request early: cancelled by its client (error None) or failed."""
        self._release(request)
        if error is not None:
            self.failed += 1
            self.loop.call_soon_threadsafe(_deliver, [(request, error)])

    def _release(self, request):
        if request in self.active:
            self.active.remove(request)
            self.free_slots.append(request.slot)


def _deliver(items):
    for request, event in items:
        request.events.put_nowait(event)


# ---- HTTP --------------------------------------------------------------------------------------

REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


class HttpError(Exception):
    def __init__(self, status, code, message, headers=()):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = list(headers)


def response_head(status, headers, keep_alive):
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(status, obj, keep_alive, headers=()):
    body = json.dumps(obj).encode()
    head = response_head(status, [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body))), *headers], keep_alive)
    return head + body


def error_body(code, message):
    return {"error": {"code": code, "message": message}}


async def read_body(reader, headers):
    """Content-Length or chunked request body, at most MAX_BODY bytes."""
    if "transfer-encoding" in headers:
        if "content-length" in headers:
            raise HttpError(400, "bad_request", "both Content-Length and Transfer-Encoding")
        if headers["transfer-encoding"].lower() != "chunked":
            raise HttpError(501, "not_implemented", "only chunked transfer encoding is supported")
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";")[0].strip(), 16)
            except ValueError:
                raise HttpError(400, "bad_request", "malformed chunk size") from None
            if len(body) + size > MAX_BODY:
                raise HttpError(413, "body_too_large", f"request body over {MAX_BODY} bytes")
            if size == 0:
                # Trailers (if any) up to the empty line.
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                return bytes(body)
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise HttpError(400, "bad_request", "malformed chunk")
    length = headers.get("content-length", "0")
    if not length.isdigit():
        raise HttpError(400, "bad_request", "malformed Content-Length")
    if int(length) > MAX_BODY:
        raise HttpError(413, "body_too_large", f"request body over {MAX_BODY} bytes")
    return await reader.readexactly(int(length))


class Server:
    def __init__(self, engine, info, args):
        self.engine = engine
        self.info = info
        self.vocab = args.vocab
        self.max_context = args.max_context
        self.max_tokens_cap = args.max_tokens_cap
        self.token_texts = build_token_texts(args.vocab)
        self.connections = set()

    async def handle_connection(self, reader, writer):
        task = asyncio.current_task()
        self.connections.add(task)
        try:
            while await self._serve_one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the peer went away, or sent a chunk line too long to be sane: just close
        finally:
            self.connections.discard(task)
            writer.close()

    async def _serve_one(self, reader, writer):
        """Read and answer one request; True when the connection may carry another."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), KEEPALIVE_IDLE_S)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError):
            return False
        except asyncio.LimitOverrunError:
            writer.write(json_response(431, error_body("header_too_large",
                                                       f"request head over {MAX_HEAD} bytes"),
                                       False))
            await writer.drain()
            return False
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ")
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
        except ValueError:
            writer.write(json_response(400, error_body("bad_request", "malformed request head"),
                                       False))
            await writer.drain()
            return False
        http11 = version == "HTTP/1.1"
        keep_alive = http11 and headers.get("connection", "").lower() != "close"
        path = target.split("?", 1)[0]
        body = None
        try:
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await read_body(reader, headers)
            if path == "/health":
                self._allow(method, "GET")
                writer.write(json_response(200, {"status": "ok"}, keep_alive))
            elif path == "/stats":
                self._allow(method, "GET")
                writer.write(json_response(200, self.stats(), keep_alive))
            elif path == "/generate":
                self._allow(method, "POST")
                return await self._generate(body, writer, keep_alive, http11)
            else:
                raise HttpError(404, "not_found", f"no route for {path}")
        except HttpError as err:
            # A body we refused (or failed) to read leaves the stream unusable.
            if body is None:
                keep_alive = False
            writer.write(json_response(err.status, error_body(err.code, err.message),
                                       keep_alive, err.headers))
        await writer.drain()
        return keep_alive

    @staticmethod
    def _allow(method, allowed):
        if method != allowed:
            raise HttpError(405, "method_not_allowed", f"use {allowed}", [("Allow", allowed)])

    def _parse_generate(self, body):
        try:
            req = json.loads(body or b"null")
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "bad_request", "body is not JSON") from None
        if not isinstance(req, dict):
            raise HttpError(400, "bad_request", "body must be a JSON object")
        prompt = req.get("prompt")
        if not isinstance(prompt, str):
            raise HttpError(400, "bad_request", '"prompt" must be a string')
        max_tokens = req.get("max_tokens", DEFAULT_MAX_TOKENS)
        if (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                or not 1 <= max_tokens <= self.max_tokens_cap):
            raise HttpError(400, "bad_request",
                            f'"max_tokens" must be an integer from 1 to {self.max_tokens_cap}')
        stream = req.get("stream", False)
        if not isinstance(stream, bool):
            raise HttpError(400, "bad_request", '"stream" must be true or false')
        temperature = req.get("temperature", 0.0)
        if (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                or not 0 <= temperature <= MAX_TEMPERATURE):
            raise HttpError(400, "bad_request",
                            f'"temperature" must be a number from 0 to {MAX_TEMPERATURE}')
        tokens = tokenize(prompt, self.vocab)
        # The last generated token is never fed back, hence the - 1.
        if len(tokens) + max_tokens - 1 > self.max_context:
            raise HttpError(400, "context_too_long",
                            f"prompt ({len(tokens)} tokens) + max_tokens ({max_tokens}) exceeds "
                            f"the model's context ({self.max_context} tokens)")
        return tokens, max_tokens, stream, float(temperature)

    async def _generate(self, body, writer, keep_alive, http11):
        tokens, max_tokens, stream, temperature = self._parse_generate(body)
        request = Request(tokens, max_tokens, temperature)
        if not self.engine.submit(request):
            raise HttpError(503, "overloaded",
                            "the request queue is full or the server is stopping",
                            [("Retry-After", "1")])
        try:
            if stream:
                return await self._stream(request, writer, keep_alive, http11)
            generated = []
            while (event := await request.events.get()) is not None:
                if isinstance(event, str):
                    raise HttpError(500, "generation_failed", event)
                generated.append(event)
            writer.write(json_response(200, {
                "tokens": generated,
                "text": "".join(self.token_texts[t] for t in generated),
                "usage": {"prompt_tokens": len(tokens), "completion_tokens": len(generated),
                          "total_tokens": len(tokens) + len(generated)},
            }, keep_alive))
            await writer.drain()
            return keep_alive
        finally:
            # Gone client or finished request alike: the worker drops it at its next step.
            request.cancelled = True

    async def _stream(self, request, writer, keep_alive, http11):
        """SSE, chunked on HTTP/1.1 (the connection survives); close-delimited on HTTP/1.0."""
        headers = [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")]
        if http11:
            headers.append(("Transfer-Encoding", "chunked"))

        def frame(data):
            return b"%x\r\n%s\r\n" % (len(data), data) if http11 else data

        writer.write(response_head(200, headers, keep_alive))
        index = 0
        while True:
            event = await request.events.get()
            if event is None:
                writer.write(frame(b"data: [DONE]\n\n"))
                break
            if isinstance(event, str):
                # Headers are gone already: report in-band and end the stream without [DONE].
                writer.write(frame(b"data: " + json.dumps(error_body("generation_failed", event))
                                   .encode() + b"\n\n"))
                break
            payload = json.dumps({"token": self.token_texts[event], "id": event, "index": index})
            writer.write(frame(b"data: " + payload.encode() + b"\n\n"))
            index += 1
            await writer.drain()
        if http11:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return keep_alive

    def stats(self):
        e = self.engine
        stats = {
            "requests_served": e.served,
            "requests_failed": e.failed,
            "requests_rejected": e.rejected,
            "tokens_generated": e.tokens,
            "decode_steps": e.steps,
            "batch_size": len(e.active),
            "max_batch_size_seen": e.max_batch_seen,
            "max_batch": e.max_batch,
            "queue_depth": e.pending.qsize(),
            "max_queue": e.pending.maxsize,
            "uptime_s": round(time.monotonic() - PROCESS_START, 3),
            **self.info,
        }
        if e.device.type == "cuda":
            stats["cuda_memory_allocated_bytes"] = torch.cuda.memory_allocated(e.device)
            stats["cuda_memory_reserved_bytes"] = torch.cuda.memory_reserved(e.device)
        return stats


# ---- start-up ----------------------------------------------------------------------------------

def env_default(name, fallback=None):
    return os.environ.get(name, fallback)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=env_default("PORT", "8000"),
                   help="listen port (env PORT, as fngate's process backend sets it)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"],
                   default=env_default("GPU_MODEL_DEVICE", "auto"),
                   help="auto: cuda when available, else cpu (env GPU_MODEL_DEVICE)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default=env_default("GPU_MODEL_DTYPE", "auto"),
                   help="auto: bfloat16 on cuda, float32 on cpu (env GPU_MODEL_DTYPE)")
    p.add_argument("--size", choices=sorted(SIZES), default=env_default("GPU_MODEL_SIZE", "base"),
                   help="model preset; the flags below override parts of it (env GPU_MODEL_SIZE)")
    for flag, env in [("layers", "GPU_MODEL_LAYERS"), ("d-model", "GPU_MODEL_D_MODEL"),
                      ("heads", "GPU_MODEL_HEADS"), ("vocab", "GPU_MODEL_VOCAB"),
                      ("max-context", "GPU_MODEL_MAX_CONTEXT")]:
        p.add_argument(f"--{flag}", type=int, default=env_default(env),
                       help=f"(env {env}; default: from --size)")
    p.add_argument("--max-batch", type=int, default=env_default("GPU_MODEL_MAX_BATCH", "8"),
                   help="sequences decoded together (match instance_concurrency)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0,
                   help="an idle worker waits this long for companions of a first arrival")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a batch slot; 503 past it")
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens accepted")
    p.add_argument("--seed", type=int, default=0, help="weights and sampling seed")
    args = p.parse_args(argv)
    for key, value in SIZES[args.size].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    problems = []
    if args.d_model % args.heads:
        problems.append(f"--d-model {args.d_model} is not a multiple of --heads {args.heads}")
    for key in ("layers", "d_model", "heads", "vocab", "max_batch", "max_queue",
                "max_tokens_cap"):
        if getattr(args, key) < 1:
            problems.append(f"--{key.replace('_', '-')} must be at least 1")
    if args.max_context < 2:
        problems.append("--max-context must be at least 2")
    if problems:
        p.error("; ".join(problems))
    return args


def memory_fraction():
    """The instance's share of its card from fngate's environment, or None for no limit."""
    def number(name):
        try:
            return float(os.environ[name])
        except ValueError:
            raise ValueError(f"{name}={os.environ[name]!r} is not a number") from None

    if os.environ.get("FNGATE_GPU_MEMORY_FRACTION"):
        fraction = number("FNGATE_GPU_MEMORY_FRACTION")
    elif os.environ.get("FNGATE_GPU_MEMORY_GB") and os.environ.get("FNGATE_GPU_CARD_MEMORY_GB"):
        # Both in the gateway's GB, so the ratio is right whatever the unit.
        fraction = number("FNGATE_GPU_MEMORY_GB") / number("FNGATE_GPU_CARD_MEMORY_GB")
    else:
        return None
    if not 0 < fraction <= 1:
        raise ValueError(f"GPU memory fraction {fraction} is not in (0, 1]")
    return fraction


def interpreter_start_s():
    """Seconds from this process's creation (fork, then exec) to the first line of this script:
    the interpreter's own start, before the timers above begin. From /proc/self/stat, whose start
    time counts clock ticks since boot (10 ms on most kernels); None where that is unavailable."""
    try:
        with open("/proc/self/stat") as f:
            # Field 22 (starttime), counted after the ")" that ends the command name.
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return round(PROCESS_START_BOOT - started_ticks / os.sysconf("SC_CLK_TCK"), 3)
    except (OSError, ValueError, IndexError, TypeError):
        return None


# What fngate told this instance (process backends): shown in /stats and the load line.
FNGATE_ENV = ("FNGATE_INSTANCE_ID", "FNGATE_INSTANCE_KIND", "FNGATE_GPU_TYPE",
              "FNGATE_GPU_MEMORY_GB", "FNGATE_GPU_CARD_MEMORY_GB", "FNGATE_GPU_MEMORY_FRACTION")


def format_count(n):
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M" if n >= 1e7 else f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}K"


def load(args):
    """Build the model on the host, move it to the device and warm it up: the cold start."""
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")
    dtype = {"auto": torch.bfloat16 if use_cuda else torch.float32, "float32": torch.float32,
             "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    fraction = None
    started = time.monotonic()
    if use_cuda:
        try:
            fraction = memory_fraction()
        except ValueError as err:
            sys.exit(str(err))
        if fraction is not None:
            # Before the first allocation, so the whole instance stays inside its share.
            torch.cuda.set_per_process_memory_fraction(fraction, device)
        # Create the CUDA context now, so its cost (part of every GPU cold start) is timed on
        # its own rather than hidden in the first copy.
        torch.zeros(1, device=device)
        torch.cuda.synchronize(device)
    cuda_ready = time.monotonic()
    torch.manual_seed(args.seed)
    model = RandomLM(args.layers, args.d_model, args.heads, args.vocab, args.max_context)
    built = time.monotonic()
    model = model.to(device=device, dtype=dtype).eval()
    cache = KVCache(args.layers, args.max_batch, args.heads, args.d_model // args.heads,
                    args.max_context, device, dtype)
    if use_cuda:
        torch.cuda.synchronize(device)
    moved = time.monotonic()

    params = sum(p.numel() for p in model.parameters())
    device_name = torch.cuda.get_device_name(device) if use_cuda else "cpu"
    info = {
        "model": {"size": args.size, "layers": args.layers, "d_model": args.d_model,
                  "heads": args.heads, "vocab": args.vocab, "max_context": args.max_context,
                  "dtype": str(dtype).removeprefix("torch."), "seed": args.seed},
        "params": params,
        "device": str(device),
        "device_name": device_name,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "memory_fraction": fraction,
        "fngate_env": {k: os.environ[k] for k in FNGATE_ENV if k in os.environ},
        "kv_cache_bytes": cache.nbytes(),
        "torch_version": torch.__version__,
        "interpreter_start_s": interpreter_start_s(),
        "import_time_s": round(IMPORTED - PROCESS_START, 3),
        "cuda_init_time_s": round(cuda_ready - started, 3),
        "build_time_s": round(built - cuda_ready, 3),
        "to_device_time_s": round(moved - built, 3),
    }
    return model, cache, device, info, started


async def serve(args, model, cache, device, info, load_started):
    loop = asyncio.get_running_loop()
    engine = Engine(model, cache, device, args.max_batch, args.max_queue,
                    args.batch_wait_ms / 1000, args.seed, loop)
    warm_started = time.monotonic()
    engine.warm_up()
    ready = time.monotonic()
    info["warmup_time_s"] = round(ready - warm_started, 3)
    info["load_time_s"] = round(ready - load_started, 3)
    engine.start()
    steps = [("cuda init", "cuda_init_time_s")] if device.type == "cuda" else []
    steps += [("build", "build_time_s"), ("to device", "to_device_time_s"),
              ("warm-up", "warmup_time_s")]
    where = str(device) if device.type == "cpu" else f"{device} {info['device_name']}"
    given = info["fngate_env"].get("FNGATE_GPU_MEMORY_FRACTION")
    # On the CPU fngate's GPU slice is bookkeeping only: say that its share was not applied.
    ignored = f" (FNGATE_GPU_MEMORY_FRACTION={given} ignored on cpu)" \
        if given and device.type == "cpu" else ""
    print(f"model loaded in {ready - load_started:.2f} s ({format_count(info['params'])} params "
          f"on {where}; " + ", ".join(f"{label} {info[key]:.2f} s" for label, key in steps)
          + f"; torch import {info['import_time_s']:.2f} s; "
          f"memory fraction {info['memory_fraction']}{ignored})", flush=True)

    app = Server(engine, info, args)
    server = await asyncio.start_server(app.handle_connection, args.host, args.port,
                                        limit=MAX_HEAD)
    info["ready_time_s"] = round(time.monotonic() - PROCESS_START, 3)
    print(f"listening on {args.host}:{args.port}", flush=True)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()

    print("stopping: no new connections, finishing requests in progress", flush=True)
    server.close()
    engine.draining = True
    deadline = time.monotonic() + SHUTDOWN_GRACE_S
    while engine.busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    # Whatever is still running is failed by the worker as it stops (streams end with an error
    # event); give the handlers a moment to write that, then drop idle keep-alive connections.
    await loop.run_in_executor(None, engine.stop, 2.0)
    await asyncio.sleep(0.05)
    for task in list(app.connections):
        task.cancel()
    await asyncio.gather(*app.connections, return_exceptions=True)
    print(f"stopped after {engine.served} requests, {engine.tokens} tokens", flush=True)


def main(argv=None):
    # Until the event loop takes over the signals: a stop while loading has nothing to drain.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    args = parse_args(argv)
    model, cache, device, info, started = load(args)
    asyncio.run(serve(args, model, cache, device, info, started))


if __name__ == "__main__":
    main()
