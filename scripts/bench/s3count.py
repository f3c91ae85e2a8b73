#!/usr/bin/env python3
"""A counting HTTP proxy in front of an S3 server, for request counts.

    s3count.py LISTEN_PORT UPSTREAM_HOST:PORT COUNTS_FILE [EVENTS_FILE]

Each client connection may carry several requests (keep-alive). Every request is
read in full (headers, then a Content-Length or chunked body), classified (PUT,
GET, LIST = a GET with list-type/prefix/delimiter on a bucket, HEAD, DELETE,
POST: multi-object delete or multipart), forwarded to the upstream with
"Connection: close", and the upstream's whole response is relayed back; then the
client connection is closed. Clients reconnect, so every request is counted
exactly once. COUNTS_FILE is rewritten as JSON after each request. With
EVENTS_FILE, each PUT whose whole response was relayed appends a line
`<end> <start> <status> <path>`: CLOCK_MONOTONIC nanoseconds when the answer
was relayed (the uploader learns the object is stored) and when the request's
headers had arrived (compare.py's S3 lag workload reads it).
"""

import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit, parse_qs

counts = {}
lock = threading.Lock()


def read_until(sock, buf, marker):
    while marker not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    i = buf.index(marker) + len(marker)
    return buf[:i], buf[i:]


def read_body(sock, rest, headers):
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            line, rest = read_until(sock, rest, b"\r\n")
            if line is None:
                return None
            size = int(line.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                rest += chunk
            body += line + rest[: size + 2]
            rest = rest[size + 2 :]
            if size == 0:
                # trailers end with an empty line; a bare CRLF was already consumed
                return body
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    return rest[:n]


def classify(method, target):
    u = urlsplit(target)
    qs = parse_qs(u.query, keep_blank_values=True)
    if method == "GET" and (u.path.strip("/").count("/") == 0) and (
        "list-type" in qs or "prefix" in qs or "delimiter" in qs or not u.path.strip("/")
    ):
        return "LIST"
    if method == "POST" and "delete" in qs:
        return "DELETE(multi)"
    return method


def handle(client, upstream):
    try:
        head, rest = read_until(client, b"", b"\r\n\r\n")
        if head is None:
            return
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("expect", "").lower() == "100-continue":
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            lines = [l for l in lines if not l.lower().startswith("expect:")]
        body = read_body(client, rest, headers)
        if body is None:
            return
        kind = classify(method, target)
        with lock:
            counts[kind] = counts.get(kind, 0) + 1
            with open(sys.argv[3] + ".tmp", "w") as f:
                json.dump(counts, f)
            os.replace(sys.argv[3] + ".tmp", sys.argv[3])
        out = [lines[0]] + [
            l for l in lines[1:] if l and not l.lower().startswith("connection:")
        ] + ["Connection: close", "", ""]
        host, port = upstream.rsplit(":", 1)
        up = socket.create_connection((host, int(port)))
        up.sendall("\r\n".join(out).encode("latin-1") + body)
        status = None
        while True:
            chunk = up.recv(65536)
            if not chunk:
                break
            if status is None:
                status = chunk.split(b" ", 2)[1].decode("latin-1")
            client.sendall(chunk)
        up.close()
        if method == "PUT" and len(sys.argv) > 4:
            t = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            with lock, open(sys.argv[4], "a") as f:
                f.write(f"{t} {t0} {status} {urlsplit(target).path}\n")
    except (OSError, ValueError):
        pass
    finally:
        client.close()


def main():
    port, upstream = int(sys.argv[1]), sys.argv[2]
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    print("ready", flush=True)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c, upstream), daemon=True).start()


if __name__ == "__main__":
    main()
