#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# A hostile NBD client against tblk-nbd, speaking the protocol by hand: malformed handshakes
# (unknown flags, garbage magic, inconsistent and oversized options, unknown options and
# exports), and requests that are out of range, overflowing, oversized, misaligned, of
# unknown type or flags, writes to a read-only export, garbage magic and truncated streams.
# Each gets the protocol's error or a disconnect; meanwhile a client connected from the start
# keeps being served, and the images change only where valid writes went. Ends with random
# byte streams (seeded; TBLK_SEED=N reproduces).
import os
import random
import signal
import socket
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_nbd import NBD, ok, serve, sha  # noqa: E402
from lib_nbd import main as nbd_main  # noqa: E402

SEED = int(os.environ.get("TBLK_SEED", random.randrange(1 << 30)))

NBDMAGIC = 0x4e42444d41474943
IHAVEOPT = 0x49484156454f5054
REPMAGIC = 0x3e889045565a9
REQ_MAGIC = 0x25609513
SIMPLE = 0x67446698
STRUCT = 0x668e33ef
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR_UNSUP, ERR_INVALID, ERR_UNKNOWN, ERR_TOO_BIG = (1 << 31) | 1, (1 << 31) | 3, \
    (1 << 31) | 6, (1 << 31) | 9
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WZ, CMD_BS = range(8)
F_FUA, F_NO_HOLE, F_DF, F_REQ_ONE, F_FAST_ZERO = 1, 2, 4, 8, 16
EPERM, EINVAL, ENOSPC = 1, 22, 28
SIZE = 4 << 20


def is_(got, want, name):
    ok(got == want, name, "got %r, want %r" % (got, want))


class Closed(Exception):
    pass


class Client:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)
        self.structured = False

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise Closed()
            b += c
        return b

    def closed(self):
        """True if the server closed the connection (EOF, after draining)."""
        try:
            while self.s.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def send(self, b):
        self.s.sendall(b)

    def greet(self, flags=3):
        magic, opt, hflags = struct.unpack(">QQH", self.recv(18))
        self.send(struct.pack(">I", flags))
        return magic == NBDMAGIC and opt == IHAVEOPT and hflags == 3

    def opt(self, opt, data=b""):
        self.send(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def reply(self):
        magic, opt, typ, ln = struct.unpack(">QIII", self.recv(20))
        assert magic == REPMAGIC
        return opt, typ, self.recv(ln)

    def replies(self):
        out = []
        while True:
            o, t, d = self.reply()
            out.append((t, d))
            if t == REP_ACK or t & (1 << 31):
                return out

    def go(self, name=b"", infos=(), structured=True, meta=()):
        if structured:
            self.opt(OPT_STRUCTURED)
            assert self.reply()[1] == REP_ACK
            self.structured = True
        if meta:
            q = b"".join(struct.pack(">I", len(m)) + m for m in meta)
            self.opt(OPT_SET_META, struct.pack(">I", len(name)) + name +
                     struct.pack(">I", len(meta)) + q)
            self.replies()
        self.opt(OPT_GO, struct.pack(">I", len(name)) + name +
                 struct.pack(">H", len(infos)) + b"".join(struct.pack(">H", i) for i in infos))
        info = {}
        for t, d in self.replies():
            if t == REP_INFO:
                info[struct.unpack(">H", d[:2])[0]] = d[2:]
            elif t != REP_ACK:
                raise Closed("GO failed %x" % t)
        self.size, self.tflags = struct.unpack(">QH", info[0])
        self.min_block = struct.unpack(">III", info[3])[0] if 3 in info else 1
        return info

    def req(self, typ, off, ln, flags=0, cookie=1, data=b""):
        self.send(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, off, ln) + data)

    def get(self):
        """One whole reply: (cookie, error, data bytes, chunk list)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            return cookie, err, None, []
        assert magic == STRUCT, hex(magic)
        chunks, err = [], 0
        while True:
            fl, typ, cookie, ln = struct.unpack(">HHQI", self.recv(16))
            d = self.recv(ln)
            chunks.append((typ, d))
            if typ & 0x8000:
                err = struct.unpack(">I", d[:4])[0]
            if fl & 1:
                return cookie, err, None, chunks
            magic = struct.unpack(">I", self.recv(4))[0]
            assert magic == STRUCT

    def read(self, off, ln, flags=0):
        """Reads through either reply kind; returns (error, bytes)."""
        self.req(CMD_READ, off, ln, flags)
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            return err, (self.recv(ln) if not err else None)
        buf, err = bytearray(ln), 0
        while True:
            fl, typ, cookie, cl = struct.unpack(">HHQI", self.recv(16))
            d = self.recv(cl)
            if typ == 1:
                o = struct.unpack(">Q", d[:8])[0] - off
                buf[o:o + len(d) - 8] = d[8:]
            elif typ & 0x8000:
                err = struct.unpack(">I", d[:4])[0]
            if fl & 1:
                return err, (bytes(buf) if not err else None)
            assert struct.unpack(">I", self.recv(4))[0] == STRUCT


def handshake_cases(sock):
    c = Client(sock)
    ok(c.greet(flags=0x80 | 3) and c.closed(), "unknown client flags: disconnect")
    c = Client(sock)
    c.greet()
    c.send(struct.pack(">QII", 0x1122334455667788, OPT_GO, 0))
    ok(c.closed(), "garbage option magic: disconnect")

    c = Client(sock)
    c.greet()
    c.opt(99, b"xyz")
    is_(c.reply()[1], ERR_UNSUP, "unknown option: NBD_REP_ERR_UNSUP")
    c.opt(5)
    is_(c.reply()[1], ERR_UNSUP, "STARTTLS: NBD_REP_ERR_UNSUP")
    c.opt(OPT_GO, struct.pack(">I", 100) + b"ab")
    is_(c.reply()[1], ERR_INVALID, "GO with a name longer than the option: ERR_INVALID")
    c.opt(OPT_GO, struct.pack(">I", 1) + b"a" + struct.pack(">H", 5) + b"\0\0")
    is_(c.reply()[1], ERR_INVALID, "GO with too few info requests: ERR_INVALID")
    c.opt(OPT_INFO, struct.pack(">I", 4) + b"nope" + struct.pack(">H", 0))
    is_(c.reply()[1], ERR_UNKNOWN, "INFO for an unknown export: ERR_UNKNOWN")
    c.opt(OPT_LIST, b"x")
    is_(c.reply()[1], ERR_INVALID, "LIST with data: ERR_INVALID")
    c.opt(OPT_SET_META, struct.pack(">II", 0, 0))
    is_(c.reply()[1], ERR_INVALID, "SET_META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID")
    c.opt(OPT_LIST_META, struct.pack(">II", 0, 1) + struct.pack(">I", 1000) + b"base:")
    is_(c.reply()[1], ERR_INVALID, "meta context query longer than the option: ERR_INVALID")
    c.opt(OPT_LIST_META, struct.pack(">II", 0, 0))
    r = c.replies()
    names = sorted(d[4:] for t, d in r if t == REP_META)
    is_(names, [b"base:allocation"], "LIST_META_CONTEXT lists base:allocation (no -A)")
    c.opt(OPT_LIST_META, struct.pack(">II", 0, 2) + struct.pack(">I", 5) + b"qemu:" +
          struct.pack(">I", 9) + b"nosuch:xy")
    r = c.replies()
    is_([t for t, d in r], [REP_ACK], "unknown namespaces match nothing")
    big = 1 << 20
    c.opt(42, b"\0" * big)
    is_(c.reply()[1], ERR_TOO_BIG, "1 MiB option: skipped, ERR_TOO_BIG")
    c.opt(OPT_STRUCTURED, b"")
    is_(c.reply()[1], REP_ACK, "STRUCTURED_REPLY: ACK")
    c.opt(OPT_STRUCTURED, b"")
    is_(c.reply()[1], ERR_INVALID, "STRUCTURED_REPLY twice: ERR_INVALID")
    c.opt(OPT_LIST)
    r = c.replies()
    ok(r[0][0] == REP_SERVER and r[-1][0] == REP_ACK, "LIST still works after the errors")
    c.opt(OPT_ABORT)
    is_(c.reply()[1], REP_ACK, "ABORT: ACK")
    ok(c.closed(), "ABORT: then disconnect")

    c = Client(sock)
    c.greet()
    c.opt(OPT_EXPORT_NAME, b"nosuch")
    ok(c.closed(), "EXPORT_NAME of an unknown export: disconnect")
    c = Client(sock)
    c.greet()
    c.opt(OPT_EXPORT_NAME, b"")
    size, fl = struct.unpack(">QH", c.recv(10))
    is_(size, SIZE, "EXPORT_NAME with NO_ZEROES: size, flags, no padding")
    err, d = c.read(0, 512)
    is_(err, 0, "simple replies after EXPORT_NAME")
    c = Client(sock)
    c.greet(flags=1)
    c.opt(OPT_EXPORT_NAME, b"")
    ok(len(c.recv(134)) == 134, "EXPORT_NAME without NO_ZEROES: 124 bytes of padding")
    c = Client(sock)
    c.greet()
    c.send(struct.pack(">QII", IHAVEOPT, OPT_GO, 50) + b"abc")
    c.s.close()   # truncated option


def request_cases(sock, img):
    c = Client(sock)
    c.greet()
    c.go(meta=[b"base:allocation"], infos=[3])
    is_(c.size, SIZE, "GO: export size")
    c.req(CMD_READ, SIZE - 512, 1024, cookie=7)
    cookie, err, d, ch = c.get()
    ok(cookie == 7 and err == EINVAL, "READ past the end: EINVAL", (cookie, err))
    c.req(CMD_READ, (1 << 64) - 512, 1024)
    is_(c.get()[1], EINVAL, "READ whose end overflows 64 bits: EINVAL")
    c.req(CMD_READ, 0, 33 << 20)
    is_(c.get()[1], EINVAL, "READ larger than 32 MiB: EINVAL")
    c.req(42, 0, 512)
    is_(c.get()[1], EINVAL, "unknown command: EINVAL")
    c.req(CMD_READ, 0, 512, flags=0x4000)
    is_(c.get()[1], EINVAL, "unknown flag: EINVAL")
    c.req(CMD_FLUSH, 0, 0, flags=F_FUA)
    is_(c.get()[1], EINVAL, "FLUSH with a flag: EINVAL")
    c.req(CMD_WRITE, SIZE - 4096, 8192, data=b"\xee" * 8192)
    is_(c.get()[1], ENOSPC, "WRITE past the end: ENOSPC, payload skipped")
    c.req(CMD_WZ, SIZE, 512)
    is_(c.get()[1], ENOSPC, "WRITE_ZEROES past the end: ENOSPC")
    c.req(CMD_TRIM, SIZE, 512)
    is_(c.get()[1], EINVAL, "TRIM past the end: EINVAL")
    c.req(CMD_BS, 0, 0)
    is_(c.get()[1], EINVAL, "BLOCK_STATUS of 0 bytes: EINVAL")
    if c.min_block > 1:
        c.req(CMD_READ, 1, c.min_block)
        is_(c.get()[1], EINVAL, "READ misaligned to the minimum block size: EINVAL")
        c.req(CMD_WRITE, 0, c.min_block + 1, data=b"\xee" * (c.min_block + 1))
        is_(c.get()[1], EINVAL, "WRITE of a misaligned length: EINVAL, payload skipped")
    else:
        ok(True, "minimum block size 1: nothing is misaligned # SKIP")
        ok(True, "minimum block size 1: nothing is misaligned # SKIP")
    # Valid requests still work after all that, and out of order is allowed.
    c.req(CMD_WRITE, 4096, 4096, flags=F_FUA, cookie=100, data=b"\x5a" * 4096)
    is_(c.get()[:2], (100, 0), "valid WRITE with FUA after the errors")
    err, d = c.read(4096, 4096)
    ok(err == 0 and d == b"\x5a" * 4096, "it reads back")
    for i in range(32):
        c.req(CMD_READ, i * 65536, 65536, cookie=1000 + i)
    got = sorted(c.get()[0] for i in range(32))
    is_(got, list(range(1000, 1032)), "32 pipelined READs all answered once")
    # More replies than the server buffers (128 MiB): it must stop reading, then go on once
    # the client takes the replies, although no new bytes arrive.
    n = 48
    for i in range(n):
        c.req(CMD_READ, 0, SIZE, flags=F_DF, cookie=2000 + i)
    got = []
    try:
        for i in range(n):
            got.append(c.get()[0])
    except (socket.timeout, Closed) as e:
        got.append(-1)
    is_(sorted(got), list(range(2000, 2000 + n)),
        "%d pipelined 4 MiB READs (beyond the buffer limit) all answered" % n)
    c.req(CMD_BS, 0, SIZE, flags=F_REQ_ONE, cookie=5)
    cookie, err, d, ch = c.get()
    bs = [x for x in ch if x[0] == 5]
    ok(err == 0 and len(bs) == 1 and len(bs[0][1]) == 12, "BLOCK_STATUS REQ_ONE: one extent",
       ch)
    c.req(CMD_READ, 1 << 20, 65536, cookie=6)
    cookie, err, d, ch = c.get()
    ok(err == 0 and [t for t, x in ch if t in (1, 2)] == [2],
       "structured READ of zeroes: one OFFSET_HOLE chunk", ch)
    c.req(CMD_READ, 1 << 20, 65536, flags=F_DF, cookie=8)
    cookie, err, d, ch = c.get()
    ok(err == 0 and [t for t, x in ch if t in (1, 2)] == [1], "READ with DF: one data chunk",
       ch)
    c.req(CMD_CACHE, 0, 65536)
    is_(c.get()[1], 0, "CACHE: ok")
    c.req(CMD_WZ, 8192, 4096, flags=F_NO_HOLE | F_FAST_ZERO, cookie=9)
    r = c.get()
    ok(r[1] in (0, 95), "WRITE_ZEROES NO_HOLE|FAST_ZERO: ok or ENOTSUP", r)
    c.req(CMD_WRITE, 65536, 33 << 20)
    is_(c.get()[1], EINVAL, "WRITE larger than 32 MiB: EINVAL...")
    ok(c.closed(), "... then disconnect (its payload cannot be skipped)")

    c = Client(sock)
    c.greet()
    c.go(structured=False)
    c.req(CMD_READ, 0, 512, flags=F_DF)
    is_(c.get()[1], EINVAL, "DF without structured replies: EINVAL")
    c.req(CMD_BS, 0, 512)
    is_(c.get()[1], EINVAL, "BLOCK_STATUS without meta contexts: EINVAL")
    c.send(struct.pack(">IHHQQI", 0xdeadbeef, 0, 0, 1, 0, 512))
    ok(c.closed(), "garbage request magic: disconnect")

    c = Client(sock)
    c.greet()
    c.go(structured=False)
    c.req(CMD_WRITE, 1 << 20, 65536, data=b"\x99" * 1000)
    c.s.close()   # truncated payload: the write must not happen
    c = Client(sock)
    c.greet()
    c.go()
    c.send(struct.pack(">IHH", REQ_MAGIC, 0, 0))
    c.s.close()   # truncated header
    c = Client(sock)
    c.greet()
    c.go()
    c.req(CMD_DISC, 0, 0)
    ok(c.closed(), "DISC: the server closes")


def read_only_cases(sock):
    c = Client(sock)
    c.greet()
    c.go()
    ok(c.tflags & 2, "read-only export: NBD_FLAG_READ_ONLY")
    c.req(CMD_WRITE, 0, 4096, data=b"\xab" * 4096)
    is_(c.get()[1], EPERM, "read-only: WRITE gets EPERM")
    c.req(CMD_WZ, 0, 4096)
    is_(c.get()[1], EPERM, "read-only: WRITE_ZEROES gets EPERM")
    c.req(CMD_TRIM, 0, 4096)
    is_(c.get()[1], EPERM, "read-only: TRIM gets EPERM")
    c.req(CMD_FLUSH, 0, 0)
    is_(c.get()[1], 0, "read-only: FLUSH succeeds")
    err, d = c.read(0, 4096)
    ok(err == 0 and d == b"\x33" * 4096, "read-only: READ after the refused writes")


def random_streams(sock, rnd):
    alive = 0
    for i in range(150):
        try:
            c = Client(sock)
            c.s.settimeout(2)
            kind = rnd.randrange(3)
            if kind == 0:
                c.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))))
            else:
                c.greet()
                if kind == 2:
                    c.go(structured=rnd.random() < 0.5)
                    # Valid-looking headers with random fields, then junk.
                    for _ in range(rnd.randrange(1, 8)):
                        c.req(rnd.choice([0, 1, 3, 4, 5, 6, 7, rnd.randrange(65536)]),
                              rnd.choice([0, SIZE - 512, rnd.randrange(1 << 64)]),
                              rnd.choice([0, 512, rnd.randrange(1 << 32)]),
                              flags=rnd.randrange(65536), cookie=rnd.randrange(1 << 64))
                c.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 200))))
            c.s.close()
            alive += 1
        except (OSError, Closed, AssertionError):
            pass
    return alive


def body(d):
    procs = []
    img = os.path.join(d, "w.raw")
    ro = os.path.join(d, "ro.raw")
    with open(img, "wb") as f:
        f.write(b"\x11" * (1 << 20) + b"\0" * (1 << 20) + b"\x11" * (SIZE - (2 << 20)))
    with open(ro, "wb") as f:
        f.write(b"\x33" * SIZE)
    ro_sum = sha(ro)
    sock = os.path.join(d, "w.sock")
    rsock = os.path.join(d, "ro.sock")
    procs.append(serve(NBD, ["-t", "-e", "0", "-f", "raw", img], sock=sock))
    procs.append(serve(NBD, ["-t", "-e", "0", "-r", "-f", "raw", ro], sock=rsock))
    bystander = Client(sock)
    bystander.greet()
    bystander.go()
    handshake_cases(sock)
    request_cases(sock, img)
    read_only_cases(rsock)
    rnd = random.Random(SEED)
    random_streams(sock, rnd)
    random_streams(rsock, rnd)
    err, data = bystander.read(0, 8192)
    ok(err == 0 and data == b"\x11" * 4096 + b"\x5a" * 4096,
       "a client connected throughout is still served (seed %d)" % SEED)
    bystander.req(CMD_DISC, 0, 0)
    for p in procs:
        ok(p.poll() is None, "server survived everything")
        p.send_signal(signal.SIGTERM)
        p.wait(20)
        is_(p.returncode, 0, "server exits cleanly")
    ok(sha(ro) == ro_sum, "the read-only image is unchanged")
    data = open(img, "rb").read()
    # Only the FUA write at 4096 and the zero write at 8192 may have changed the image.
    want = b"\x11" * 4096 + b"\x5a" * 4096
    rest = b"\x11" * ((1 << 20) - 12288) + b"\0" * (1 << 20) + b"\x11" * (SIZE - (2 << 20))
    ok(data[:8192] == want and data[12288:] == rest and
       data[8192:12288] in (b"\0" * 4096,),
       "the writable image changed only where valid writes went")


if __name__ == "__main__":
    sys.exit(nbd_main("tnbdh-", body))
