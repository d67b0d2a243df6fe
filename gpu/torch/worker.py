# The swarm PyTorch worker. The node writes this file out and starts it with
# python3; it computes one shard of a model on CUDA (when present) or the CPU.
#
# It reads request frames on fd 3 and writes reply frames on fd 4; stderr is
# for diagnostics. A frame is a 16-byte little-endian header
#   magic u32 | version u16 | type u16 | id u32 | length u32
# followed by length bytes of payload:
#   meta_len u32 | meta (JSON object) | count u32 | count x (dtype u8 | elems u32 | data)
# with dtype 1 = float32, 2 = int32. The Go side (gpu/torch/protocol.go) is
# the reference for this format.
#
# The models and the optimizer follow gpu/native exactly: same parameter
# layout (names, shapes, order), same formulas, float32 throughout.
import json
import math
import os
import struct
import sys
import threading
import time

MAGIC = 0x57545753
VERSION = 1
HEADER = struct.Struct("<IHHII")
MAX_FRAME = 1 << 30
MAX_META = 1 << 20
MAX_TENSORS = 16

T_INIT, T_FORWARD, T_BACKWARD, T_RELEASE, T_ZERO_GRAD, T_GRAD_NORM, T_STEP, T_GET_STATE, T_SET_STATE, T_SHUTDOWN, T_PING = range(1, 12)
T_OK, T_ERROR = 64, 65

F32, I32 = 1, 2


def die(msg, code=3):
    sys.stderr.write("swarm torch worker: %s\n" % msg)
    sys.stderr.flush()
    os._exit(code)


try:
    import numpy as np
    import torch
    import torch.nn.functional as F
except Exception as exc:  # the Go side turns this into "torch unavailable"
    die("cannot import torch/numpy: %r" % (exc,), 3)


def watch_parent(ppid):
    # Belt and braces next to PR_SET_PDEATHSIG: exit when the node is gone.
    while True:
        if os.getppid() != ppid:
            os._exit(4)
        time.sleep(0.5)


class Protocol:
    def __init__(self, rfd, wfd):
        self.r = os.fdopen(rfd, "rb", buffering=0)
        self.w = os.fdopen(wfd, "wb", buffering=0)

    def read_exact(self, n):
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.r.readinto(view[got:])
            if not k:
                return None
            got += k
        return buf

    def recv(self):
        h = self.read_exact(HEADER.size)
        if h is None:
            return None
        magic, version, typ, rid, length = HEADER.unpack(h)
        if magic != MAGIC or version != VERSION:
            die("bad frame header (magic %#x version %d)" % (magic, version), 5)
        if length > MAX_FRAME:
            die("frame of %d bytes over the limit" % length, 5)
        body = self.read_exact(length)
        if body is None:
            return None
        meta, tensors = decode_payload(body)
        return typ, rid, meta, tensors

    def send(self, typ, rid, meta, tensors=()):
        mb = json.dumps(meta).encode()
        parts = [struct.pack("<I", len(mb)), mb, struct.pack("<I", len(tensors))]
        for t in tensors:
            if t.dtype == torch.int32:
                dt = I32
            else:
                dt = F32
                t = t.to(torch.float32)
            a = t.detach().reshape(-1).cpu().contiguous().numpy()
            parts.append(struct.pack("<BI", dt, a.size))
            parts.append(a.tobytes())
        body = b"".join(parts)
        self.w.write(HEADER.pack(MAGIC, VERSION, typ, rid, len(body)))
        self.w.write(body)


def decode_payload(body):
    mv = memoryview(body)
    (ml,) = struct.unpack_from("<I", mv, 0)
    if ml > MAX_META or 4 + ml + 4 > len(body):
        raise ValueError("bad meta length %d" % ml)
    meta = json.loads(bytes(mv[4:4 + ml]))
    off = 4 + ml
    (count,) = struct.unpack_from("<I", mv, off)
    off += 4
    if count > MAX_TENSORS:
        raise ValueError("%d tensors over the limit" % count)
    tensors = []
    for _ in range(count):
        dt, n = struct.unpack_from("<BI", mv, off)
        off += 5
        if off + 4 * n > len(body):
            raise ValueError("tensor past the end of the frame")
        dtype = np.float32 if dt == F32 else np.int32
        if dt not in (F32, I32):
            raise ValueError("unknown dtype %d" % dt)
        a = np.frombuffer(body, dtype=dtype, count=n, offset=off).copy()
        tensors.append(torch.from_numpy(a))
        off += 4 * n
    return meta, tensors


class NonFinite(Exception):
    pass


class Shard:
    def __init__(self, meta, tensors):
        self.dev = pick_device(meta.get("device", "auto"))
        if self.dev.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(meta.get("tf32", False))
            torch.backends.cudnn.allow_tf32 = bool(meta.get("tf32", False))
            cap = int(meta.get("max_memory_mib", 0)) << 20
            if cap > 0:
                total = torch.cuda.get_device_properties(self.dev).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), self.dev)
        threads = int(meta.get("threads", 0))
        if threads > 0:
            torch.set_num_threads(threads)
        self.model = meta["model"]
        self.arch = self.model["arch"]
        self.start, self.end = meta["start"], meta["end"]
        self.first, self.last = meta["first"], meta["last"]
        self.opt = meta["optimizer"]
        self.names = meta["names"]
        self.shapes = meta["shapes"]
        self.decay = meta["decay"]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.numel = sum(self.sizes)
        self.p = {}
        for name, shape in zip(self.names, self.shapes):
            t = torch.zeros(shape, dtype=torch.float32, device=self.dev, requires_grad=True)
            t.grad = torch.zeros_like(t)
            self.p[name] = t
        nstate = 2 if self.opt["name"] == "adamw" else 1
        self.state = [[torch.zeros(s, dtype=torch.float32, device=self.dev) for s in self.shapes] for _ in range(nstate)]
        self.step = 0
        self.tapes = {}
        self.set_state(meta, tensors)

    # -- flat buffers ---------------------------------------------------
    def flat(self, ts):
        return torch.cat([t.detach().reshape(-1) for t in ts]) if ts else torch.zeros(0)

    def unflat(self, buf, ts):
        if buf.numel() != sum(t.numel() for t in ts):
            raise ValueError("buffer of %d values, want %d" % (buf.numel(), sum(t.numel() for t in ts)))
        buf = buf.to(self.dev)
        off = 0
        with torch.no_grad():
            for t in ts:
                n = t.numel()
                t.copy_(buf[off:off + n].view_as(t))
                off += n

    def params(self):
        return [self.p[n] for n in self.names]

    def grads(self):
        return [self.p[n].grad for n in self.names]

    def opt_tensors(self):
        return [t for group in self.state for t in group]

    def get_state(self, what):
        out = []
        for w in what:
            out.append(self.flat({"params": self.params, "grads": self.grads, "opt": self.opt_tensors}[w]()))
        return out

    def set_state(self, meta, tensors):
        what = meta.get("what", [])
        if len(what) != len(tensors):
            raise ValueError("%d buffers named, %d sent" % (len(what), len(tensors)))
        for w, t in zip(what, tensors):
            self.unflat(t, {"params": self.params, "grads": self.grads, "opt": self.opt_tensors}[w]())
        if "step" in meta:
            self.step = int(meta["step"])

    # -- model ------------------------------------------------------------
    def run(self, n, x, tokens, inp):
        m = self.model
        if self.arch == "mlp-mnist":
            h = x if self.first else inp.view(n, -1)
            units = len(m["hidden"]) + 1
            for i in range(self.start, self.end):
                h = F.linear(h, self.p["l%d.w" % i], self.p["l%d.b" % i])
                if i != units - 1:
                    h = torch.relu(h)
            return h
        T, C, H = m["block_size"], m["n_embd"], m["n_head"]
        if self.first:
            tok = tokens.view(n, T).long()
            h = self.p["wte"][tok] + self.p["wpe"].unsqueeze(0)
        else:
            h = inp.view(n, T, C)
        mask = torch.ones(T, T, dtype=torch.bool, device=self.dev).triu(1)
        for i in range(self.start, self.end):
            p = lambda s: self.p["h%d.%s" % (i, s)]
            a = F.layer_norm(h, (C,), p("ln1.w"), p("ln1.b"), 1e-5)
            qkv = F.linear(a, p("attn.qkv.w"), p("attn.qkv.b"))
            q, k, v = qkv.split(C, dim=2)
            hd = C // H
            q = q.view(n, T, H, hd).transpose(1, 2)
            k = k.view(n, T, H, hd).transpose(1, 2)
            v = v.view(n, T, H, hd).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
            att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
            y = (att @ v).transpose(1, 2).reshape(n, T, C)
            h = h + F.linear(y, p("attn.proj.w"), p("attn.proj.b"))
            a = F.layer_norm(h, (C,), p("ln2.w"), p("ln2.b"), 1e-5)
            h = h + F.linear(F.gelu(F.linear(a, p("mlp.fc.w"), p("mlp.fc.b")), approximate="tanh"), p("mlp.proj.w"), p("mlp.proj.b"))
        if self.last:
            h = F.layer_norm(h, (C,), self.p["lnf.w"], self.p["lnf.b"], 1e-5)
            h = F.linear(h, self.p["head.w"])
        return h

    def forward(self, meta, tensors):
        n, train, tape = int(meta["n"]), bool(meta["train"]), int(meta.get("tape", 0))
        it = iter(tensors)
        x = tokens = inp = targets = None
        if self.first:
            if self.arch == "mlp-mnist":
                x = next(it).to(self.dev).view(n, -1)
            else:
                tokens = next(it).to(self.dev)
        else:
            inp = next(it).to(self.dev)
        if self.last:
            targets = next(it).to(self.dev).long().view(-1)
        if train:
            if inp is not None:
                inp.requires_grad_(True)
            out = self.run(n, x, tokens, inp)
        else:
            with torch.no_grad():
                out = self.run(n, x, tokens, inp)
        if self.last:
            logits = out.reshape(targets.numel(), -1)
            loss = F.cross_entropy(logits, targets)
            if train:
                self.tapes[tape] = (inp, loss)
                return {"loss": float(loss.item())}, []
            return {"loss": float(loss.item())}, [out]
        if train:
            self.tapes[tape] = (inp, out)
        return {}, [out.reshape(n, -1)]

    def backward(self, meta, tensors):
        tape = int(meta["tape"])
        if tape not in self.tapes:
            raise KeyError("unknown tape %d" % tape)
        inp, out = self.tapes.pop(tape)
        if self.last:
            out.backward()
        else:
            out.backward(tensors[0].to(self.dev).view_as(out))
        if inp is None:
            return {}, []
        return {}, [inp.grad]

    def grad_norm_sq(self):
        s = 0.0
        for g in self.grads():
            s += float(g.double().pow(2).sum().item())
        return s

    @torch.no_grad()
    def do_step(self, lr, scale):
        for name, g in zip(self.names, self.grads()):
            if not bool(torch.isfinite(g).all()):
                raise NonFinite("gradient of %s holds NaN or Inf" % name)
        o = self.opt
        wd = float(o.get("weight_decay", 0.0))
        t = self.step + 1
        if o["name"] == "adamw":
            b1, b2, eps = float(o["beta1"]), float(o["beta2"]), float(o["eps"])
            c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
            for i, name in enumerate(self.names):
                p, g = self.p[name], self.p[name].grad * scale
                m, v = self.state[0][i], self.state[1][i]
                m.mul_(b1).add_(g, alpha=1.0 - b1)
                v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
                if self.decay[i] and wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.sub_(lr * (m / c1) / ((v / c2).sqrt() + eps))
        else:
            mu = float(o.get("momentum", 0.0))
            for i, name in enumerate(self.names):
                p, g = self.p[name], self.p[name].grad * scale
                if self.decay[i] and wd != 0.0:
                    g = g + wd * p
                buf = self.state[0][i]
                buf.mul_(mu).add_(g)
                p.sub_(lr * buf)
        self.step = t


def pick_device(want):
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA requested but torch.cuda.is_available() is false")
        return torch.device("cuda")
    return torch.device("cpu")


def main():
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    proto = Protocol(3, 4)
    shard = None
    while True:
        msg = proto.recv()
        if msg is None:
            return
        typ, rid, meta, tensors = msg
        try:
            if typ == T_PING:
                reply = ({"torch": torch.__version__, "cuda": torch.cuda.is_available()}, [])
            elif typ == T_INIT:
                shard = Shard(meta, tensors)
                info = {"device": shard.dev.type, "torch": torch.__version__, "threads": torch.get_num_threads()}
                if shard.dev.type == "cuda":
                    info["device_name"] = torch.cuda.get_device_name(shard.dev)
                reply = (info, [])
            elif typ == T_SHUTDOWN:
                proto.send(T_OK, rid, {})
                return
            elif shard is None:
                raise RuntimeError("shard not initialised")
            elif typ == T_FORWARD:
                reply = shard.forward(meta, tensors)
            elif typ == T_BACKWARD:
                reply = shard.backward(meta, tensors)
            elif typ == T_RELEASE:
                shard.tapes.pop(int(meta["tape"]), None)
                reply = ({}, [])
            elif typ == T_ZERO_GRAD:
                for g in shard.grads():
                    g.zero_()
                reply = ({}, [])
            elif typ == T_GRAD_NORM:
                reply = ({"normsq": shard.grad_norm_sq()}, [])
            elif typ == T_STEP:
                shard.do_step(float(meta["lr"]), float(meta["scale"]))
                what = meta.get("what", [])
                reply = ({"step": shard.step}, shard.get_state(what))
            elif typ == T_GET_STATE:
                what = meta.get("what", [])
                reply = ({"step": shard.step}, shard.get_state(what))
            elif typ == T_SET_STATE:
                shard.set_state(meta, tensors)
                reply = ({}, [])
            else:
                raise ValueError("unknown message type %d" % typ)
        except NonFinite as exc:
            proto.send(T_ERROR, rid, {"error": str(exc), "kind": "nonfinite"})
            continue
        except KeyError as exc:
            proto.send(T_ERROR, rid, {"error": str(exc), "kind": "tape"})
            continue
        except Exception as exc:
            proto.send(T_ERROR, rid, {"error": "%s: %s" % (type(exc).__name__, exc)})
            continue
        proto.send(T_OK, rid, reply[0], reply[1])


if __name__ == "__main__":
    main()
