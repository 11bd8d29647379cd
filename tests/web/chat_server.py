"""An OpenAI-compatible chat endpoint for the LLM-bridge tests: a real HTTP server on loopback.

It speaks the wire format of `POST /v1/chat/completions` with `stream: true` (server-sent events of
`chat.completion.chunk` objects, then `data: [DONE]`), with CORS as llama.cpp's server and Ollama send it.
The model is the only boundary replaced: its replies are scripted, one per request.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ChatServer:
    def __init__(self, replies: list[list[str]], token_interval_s: float = 0.03,
                 on_thread_start: Callable[[], None] | None = None) -> None:
        self.replies = list(replies)  # the tokens of each successive reply
        self.token_interval_s = token_interval_s
        self.requests: list[dict[str, Any]] = []
        self.status = 200  # set to an error status to make every request fail
        self._ready = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread = threading.Thread(target=self._serve, args=(on_thread_start,), daemon=True,
                                        name="chat-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("chat server did not start")

    def _serve(self, on_thread_start: Callable[[], None] | None) -> None:
        if on_thread_start is not None:
            on_thread_start()  # the socket must be created inside the test's network namespace
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._ready.set()
        self._httpd.serve_forever(poll_interval=0.1)

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()


def _handler(chat: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _cors(self) -> None:
            self.send_header("Access-Control-Allow-Origin", "*")
            self.send_header("Access-Control-Allow-Headers", "content-type, authorization")
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")

        def do_OPTIONS(self) -> None:  # the browser's CORS preflight
            self.send_response(204)
            self._cors()
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            chat.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            if chat.status != 200 or self.path != "/v1/chat/completions":
                status = chat.status if chat.status != 200 else 404
                error = json.dumps({"error": {"message": "invalid api key" if status == 401 else "no such route",
                                              "type": "invalid_request_error"}}).encode()
                self.send_response(status)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(error)))
                self.end_headers()
                self.wfile.write(error)
                return
            tokens = chat.replies.pop(0) if chat.replies else ["(no scripted reply)"]
            self.send_response(200)
            self._cors()
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                self._event({"role": "assistant", "content": ""}, None)
                for token in tokens:
                    time.sleep(chat.token_interval_s)
                    self._event({"content": token}, None)
                self._event({}, "stop")
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):  # the page aborted the reply
                pass
            self.close_connection = True

        def _event(self, delta: dict[str, Any], finish: str | None) -> None:
            chunk = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "model": "scripted",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

    return Handler
