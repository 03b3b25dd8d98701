"""FakeOpenAIServer plus OpenAI's files and batches API, on 127.0.0.1.

Routes added to those of tests/fakeserver.py (chat completions stay as they are):

    POST /v1/files                   multipart upload (purpose=batch) -> file object
    GET  /v1/files/{id}/content      the bytes of an input, output or error file
    POST /v1/batches                 {input_file_id, endpoint, completion_window} -> batch object
    GET  /v1/batches/{id}            the batch; every GET is one poll and moves it on
    GET  /v1/batches                 list (newest first)
    POST /v1/batches/{id}/cancel     -> "cancelling"; the next poll makes it "cancelled"

A batch advances by polls, not by time, so tests are deterministic: after poll
p of `polls_to_finish`, the first total*p // polls_to_finish lines have been
answered (`answer(messages)`, usage as the chat route counts it).  It is
"completed" at poll `polls_to_finish`, or "expired" at poll
`expire_after_polls` with only the lines answered so far; a cancelled batch
keeps those too.  The output file has one line per answered request
({"custom_id", "response": {"status_code", "body"}, "error": null}); the error
file the lines that failed.  `line_fault(custom_id, body) -> None | "error" |
"500"` fails a line: "error" puts it in the error file with an error object,
"500" in the output file with a non-200 status (OpenAI uses both forms).
`lose_creates = n`: the next n batch creations happen, but their answer is
lost (connection reset), as when a client dies right after the request.

Counters: `files_uploaded`, `batches_created`, `polls` (batch id -> GETs),
`lines_billed` (batch lines answered: what a provider bills at the batch
price), `cancels`.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import Counter
from email.parser import BytesParser
from email.policy import HTTP
from typing import Callable

from tests.fakeserver import FakeOpenAIServer, _Handler, default_answer

TERMINAL = ("completed", "expired", "cancelled", "failed")


class FakeBatchServer(FakeOpenAIServer):
    def __init__(self, answer=default_answer, *, polls_to_finish: int = 2, expire_after_polls: int | None = None,
                 line_fault: Callable[[str, dict], str | None] | None = None, lose_creates: int = 0, **kw) -> None:
        super().__init__(answer, **kw)
        self.polls_to_finish = polls_to_finish
        self.expire_after_polls = expire_after_polls
        self.line_fault = line_fault
        self.lose_creates = lose_creates  # the next n POST /v1/batches make the batch, then reset the connection
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.files_uploaded = 0
        self.batches_created = 0
        self.polls: Counter[str] = Counter()
        self.lines_billed = 0
        self.cancels = 0
        self._ids = 0
        self._batch_lock = threading.Lock()

    def _new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids:04d}"

    # -- state changes (under _batch_lock) ---------------------------------
    def _upload(self, data: bytes, filename: str, purpose: str) -> dict:
        fid = self._new_id("file")
        self.files[fid] = data
        self.files_uploaded += 1
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": filename, "purpose": purpose, "status": "processed"}

    def _create(self, req: dict) -> dict:
        lines = [json.loads(x) for x in self.files[req["input_file_id"]].decode().splitlines() if x.strip()]
        bid = self._new_id("batch")
        self.batches[bid] = {
            "id": bid, "object": "batch", "endpoint": req["endpoint"], "errors": None,
            "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
            "status": "validating", "output_file_id": None, "error_file_id": None,
            "created_at": int(time.time()), "metadata": req.get("metadata"),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "_lines": lines, "_out": [], "_err": [],
        }
        self.batches_created += 1
        return self.batches[bid]

    def _poll(self, bid: str) -> dict:
        b = self.batches[bid]
        self.polls[bid] += 1
        p = self.polls[bid]
        if b["status"] in TERMINAL:
            return b
        if b["status"] == "cancelling":
            return self._finish(b, "cancelled")
        if self.expire_after_polls is not None and p >= self.expire_after_polls:
            return self._finish(b, "expired")
        total = b["request_counts"]["total"]
        self._answer_up_to(b, total if p >= self.polls_to_finish else total * p // self.polls_to_finish)
        if p >= self.polls_to_finish:
            return self._finish(b, "completed")
        b["status"] = "in_progress"
        return b

    def _answer_up_to(self, b: dict, n: int) -> None:
        counts = b["request_counts"]
        while counts["completed"] + counts["failed"] < n:
            line = b["_lines"][counts["completed"] + counts["failed"]]
            cid, body = line["custom_id"], line["body"]
            fault = self.line_fault(cid, body) if self.line_fault else None
            if fault == "error":
                b["_err"].append({"id": f"req-{cid[:8]}", "custom_id": cid, "response": None,
                                  "error": {"code": "server_error", "message": "the line could not be processed"}})
                counts["failed"] += 1
            elif fault == "500":
                b["_out"].append({"id": f"req-{cid[:8]}", "custom_id": cid, "error": None, "response": {
                    "status_code": 500, "request_id": cid[:8],
                    "body": {"error": {"message": "The server had an error.", "type": "server_error"}}}})
                counts["failed"] += 1
            else:
                b["_out"].append({"id": f"req-{cid[:8]}", "custom_id": cid, "error": None, "response": {
                    "status_code": 200, "request_id": cid[:8], "body": self._completion(cid, body)}})
                counts["completed"] += 1
                self.lines_billed += 1

    def _completion(self, cid: str, body: dict) -> dict:
        messages = body["messages"]
        text = self.answer(messages)
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = self._count_tokens(body, text)
        return {"id": f"chatcmpl-{cid[:12]}", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    def _finish(self, b: dict, status: str) -> dict:
        for key, rows in (("output_file_id", b["_out"]), ("error_file_id", b["_err"])):
            if rows:
                fid = self._new_id("file")
                self.files[fid] = "".join(json.dumps(r) + "\n" for r in rows).encode()
                b[key] = fid
        b["status"] = status
        return b


def _public(b: dict) -> dict:
    return {k: v for k, v in b.items() if not k.startswith("_")}


class _BatchHandler(_Handler):
    srv: FakeBatchServer

    def _authorized(self) -> bool:
        if self.srv.api_key is not None and self.headers.get("Authorization") != f"Bearer {self.srv.api_key}":
            self._error(401, "Incorrect API key provided.", "invalid_request_error")
            return False
        return True

    def do_GET(self) -> None:
        srv, parts = self.srv, self.path.split("?")[0].strip("/").split("/")
        if parts[:2] not in (["v1", "files"], ["v1", "batches"]):
            return super().do_GET()
        with srv._lock:
            srv.requests += 1
        if not self._authorized():
            return
        with srv._batch_lock:
            if parts[1] == "files" and len(parts) == 4 and parts[3] == "content" and parts[2] in srv.files:
                raw = srv.files[parts[2]]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return
            if parts[1] == "batches" and len(parts) == 2:
                data = [_public(b) for b in reversed(srv.batches.values())]
                return self._send_json(200, {"object": "list", "data": data, "has_more": False,
                                             "first_id": data[0]["id"] if data else None,
                                             "last_id": data[-1]["id"] if data else None})
            if parts[1] == "batches" and len(parts) == 3 and parts[2] in srv.batches:
                return self._send_json(200, _public(srv._poll(parts[2])))
        self._error(404, f"no such object {self.path}", "invalid_request_error")

    def _post(self) -> None:
        srv, parts = self.srv, self.path.split("?")[0].strip("/").split("/")
        if parts[:2] not in (["v1", "files"], ["v1", "batches"]):
            return super()._post()
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with srv._lock:
            srv.requests += 1
            srv.auth_headers.append(self.headers.get("Authorization", ""))
        if not self._authorized():
            return
        with srv._batch_lock:
            if parts == ["v1", "files"]:
                form = _multipart(self.headers.get("Content-Type", ""), raw)
                data, filename = form.get("file", (b"", "input.jsonl"))
                return self._send_json(200, srv._upload(data, filename, form.get("purpose", (b"batch",))[0].decode()))
            if parts == ["v1", "batches"]:
                req = json.loads(raw)
                if req.get("input_file_id") not in srv.files:
                    return self._error(400, "no such input file", "invalid_request_error")
                job = _public(srv._create(req))
                if srv.lose_creates > 0:  # made, but the answer never reaches the client
                    srv.lose_creates -= 1
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                return self._send_json(200, job)
            if len(parts) == 4 and parts[3] == "cancel" and parts[2] in srv.batches:
                b = srv.batches[parts[2]]
                if b["status"] not in TERMINAL:
                    b["status"] = "cancelling"
                    srv.cancels += 1
                return self._send_json(200, _public(b))
        self._error(404, f"no route {self.path}", "not_found")


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[bytes, str | None]]:
    """{field name: (bytes, filename)} of a multipart/form-data body."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    out: dict[str, tuple[bytes, str | None]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        out[name] = (part.get_payload(decode=True) or b"", part.get_filename())
    return out


FakeBatchServer.handler_class = _BatchHandler
