# The swarm PyTorch worker. The node writes this file out and starts it with
# python3; it computes one shard of a model on CUDA (when present) or the CPU.
#
# It reads request frames on fd 3 and writes reply frames on fd 4; stderr is
# for diagnostics. A frame is a 16-byte little-endian header
#   magic u32 | version u16 | type u16 | id u32 | length u32
# followed by length bytes of payload:
#   meta_len u32 | meta (JSON object) | count u32 | count x (dtype u32 | elems u32 | data)
# with dtype 1 = float32, 2 = int32; the meta is padded with spaces to a
# multiple of 4 bytes so tensor data is aligned and is viewed in place, never
# converted. The Go side (engine/torch/protocol.go) is the reference for this
# format.
#
# The parameters, gradients and optimizer state each live in one flat device
# buffer in the shared layout; the per-tensor parameters are views into it.
# They stay here between requests: the node fetches them only when it needs
# them (GET_STATE) and keeps its own snapshot plus a log of requests to
# rebuild this state in a restarted worker.
#
# The models and the optimizer follow engine/native exactly: same parameter
# layout (names, shapes, order), same formulas, float32 throughout on the
# CPU. On CUDA the fast path (precision "bf16", the default there) runs the
# forward under bf16 autocast with the float32 flat buffers as master weights
# and a float32 optimizer, allows TF32 for the matmuls left in float32, and
# reads no loss per micro-batch when asked to defer it (the loss is summed on
# the device and read by TAKE_LOSS). Attention uses
# torch.nn.functional.scaled_dot_product_attention when the installed torch
# has it (2.0 and later; its flash kernels on CUDA), else the explicit
# softmax(q k^T / sqrt(hd)) v, which gives the same values in float32.
import contextlib
import json
import math
import os
import struct
import sys
import threading
import time

MAGIC = 0x57545753
VERSION = 2
HEADER = struct.Struct("<IHHII")
MAX_FRAME = 1 << 30
MAX_META = 1 << 20
MAX_TENSORS = 16

T_INIT, T_FORWARD, T_BACKWARD, T_RELEASE, T_ZERO_GRAD, T_GRAD_NORM, T_STEP, T_GET_STATE, T_SET_STATE, T_SHUTDOWN, T_PING, T_TAKE_LOSS = range(1, 13)
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
    import torch.utils.checkpoint
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

    def write_all(self, b):
        mv = memoryview(b).cast("B")
        while len(mv):
            k = self.w.write(mv)
            mv = mv[k:]

    def send(self, typ, rid, meta, tensors=()):
        mb = json.dumps(meta).encode()
        mb += b" " * (-len(mb) % 4)
        arrays = []
        for t in tensors:
            dt = I32 if t.dtype == torch.int32 else F32
            t = t.detach()
            if dt == F32 and t.dtype != torch.float32:
                t = t.to(torch.float32)
            # One device-to-host copy at most; a contiguous CPU tensor is
            # written from its own memory.
            arrays.append((dt, t.reshape(-1).cpu().contiguous().numpy()))
        size = 4 + len(mb) + 4 + sum(8 + 4 * a.size for _, a in arrays)
        head = [HEADER.pack(MAGIC, VERSION, typ, rid, size), struct.pack("<I", len(mb)), mb, struct.pack("<I", len(arrays))]
        for dt, a in arrays:
            if a.size * 4 <= 65536:
                head.append(struct.pack("<II", dt, a.size))
                head.append(a.tobytes())
                continue
            head.append(struct.pack("<II", dt, a.size))
            self.write_all(b"".join(head))
            head = []
            self.write_all(a)
        if head:
            self.write_all(b"".join(head))


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
        dt, n = struct.unpack_from("<II", mv, off)
        off += 8
        if off + 4 * n > len(body):
            raise ValueError("tensor past the end of the frame")
        if dt not in (F32, I32):
            raise ValueError("unknown dtype %d" % dt)
        # A view of the received bytes (a fresh bytearray per frame): no copy.
        a = np.frombuffer(body, dtype=np.float32 if dt == F32 else np.int32, count=n, offset=off)
        tensors.append(torch.from_numpy(a))
        off += 4 * n
    return meta, tensors


class NonFinite(Exception):
    pass


def is_oom(exc):
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc)


class Shard:
    def __init__(self, meta, tensors):
        self.dev = pick_device(meta.get("device", "auto"))
        precision = meta.get("precision", "auto") or "auto"
        if precision == "auto":
            precision = "bf16" if self.dev.type == "cuda" else "fp32"
        if precision not in ("fp32", "bf16"):
            raise ValueError("precision %r: want auto, fp32 or bf16" % precision)
        if precision == "bf16" and self.dev.type != "cuda":
            raise ValueError("precision bf16 needs CUDA (this worker runs on %s): use fp32" % self.dev.type)
        self.precision = precision
        self.autocast = precision == "bf16"
        # SDPA where torch has it, unless the node asks for the explicit
        # attention (tests compare the two).
        self.sdpa = bool(meta.get("sdpa", True)) and hasattr(F, "scaled_dot_product_attention")
        # Activation checkpointing: a training forward keeps only each
        # block's input and recomputes the block in the backward (memory
        # for the larger presets, about a third more compute).
        self.ckpt = bool(meta.get("checkpoint_activations", False))
        self.loss_sum = None  # device tensor: sum of loss * n of deferred forwards
        self.loss_n = 0
        if self.dev.type == "cuda":
            tf32 = bool(meta.get("tf32", False)) or self.autocast
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
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
        nstate = 2 if self.opt["name"] == "adamw" else 1
        self.flat_p = torch.zeros(self.numel, dtype=torch.float32, device=self.dev)
        self.flat_g = torch.zeros(self.numel, dtype=torch.float32, device=self.dev)
        self.flat_s = torch.zeros(nstate * self.numel, dtype=torch.float32, device=self.dev)
        self.p = {}
        self.state = [[] for _ in range(nstate)]
        self.grad_ptr = {}
        off = 0
        for name, shape, size in zip(self.names, self.shapes, self.sizes):
            # A leaf parameter sharing the flat buffer's memory; autograd
            # accumulates in place into its .grad, a view of flat_g.
            t = self.flat_p[off:off + size].view(shape).detach().requires_grad_(True)
            t.grad = self.flat_g[off:off + size].view(shape)
            self.grad_ptr[name] = t.grad.data_ptr()
            self.p[name] = t
            for k in range(nstate):
                base = k * self.numel + off
                self.state[k].append(self.flat_s[base:base + size].view(shape))
            off += size
        self.step = 0
        self.tapes = {}
        self.set_state(meta, tensors)
        self.model_fn = self.run_cuts
        self.compiled = False
        if meta.get("compile") and hasattr(torch, "compile"):
            # Graphs are traced on first use of each micro-batch size.
            self.model_fn = torch.compile(self.run_cuts)
            self.compiled = True

    # -- flat buffers ---------------------------------------------------
    def buffer(self, what):
        return {"params": self.flat_p, "grads": self.flat_g, "opt": self.flat_s}[what]

    def grads(self):
        return [self.p[n].grad for n in self.names]

    def get_state(self, what):
        return [self.buffer(w) for w in what]

    @torch.no_grad()
    def set_state(self, meta, tensors):
        what = meta.get("what", [])
        if len(what) != len(tensors):
            raise ValueError("%d buffers named, %d sent" % (len(what), len(tensors)))
        for w, t in zip(what, tensors):
            dst = self.buffer(w)
            if t.numel() != dst.numel():
                raise ValueError("%s buffer of %d values, want %d" % (w, t.numel(), dst.numel()))
            dst.copy_(t, non_blocking=True)  # one host-to-device copy
        if "step" in meta:
            self.step = int(meta["step"])

    def keep_grads_flat(self):
        # Autograd accumulates into an existing .grad in place; should it
        # ever replace one, fold the new tensor back into the flat buffer.
        for name in self.names:
            p = self.p[name]
            if p.grad is None or p.grad.data_ptr() != self.grad_ptr[name]:
                off = sum(self.sizes[:self.names.index(name)])
                view = self.flat_g[off:off + p.numel()].view_as(p)
                with torch.no_grad():
                    if p.grad is None:
                        view.zero_()
                    else:
                        view.copy_(p.grad)
                p.grad = view

    # -- model ------------------------------------------------------------
    def attend(self, q, k, v, mask):
        # q, k, v: [n, heads, T, hd]; causal. SDPA's scale is 1/sqrt(hd).
        if self.sdpa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
        return att @ v

    def run_cuts(self, n, x, tokens, inp):
        # training.activation_rank: the shard widens each incoming row from
        # rank values (cut{start}.up.w [width, rank]) and narrows each
        # outgoing row to rank values (cut{end}.down.w [rank, width]).
        up = self.p.get("cut%d.up.w" % self.start)
        if up is not None:
            # float32 like any shard's input, bf16 autocast or not (the
            # residual stream stays float32).
            inp = F.linear(inp.view(n, -1, up.shape[1]), up).float().reshape(n, -1)
        h = self.run(n, x, tokens, inp)
        down = self.p.get("cut%d.down.w" % self.end)
        if down is not None:
            h = F.linear(h.reshape(n, -1, down.shape[1]), down)
        return h

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
        if self.arch == "llama":
            return self.run_llama(n, tokens, inp)
        T, C, H = m["block_size"], m["n_embd"], m["n_head"]
        if self.first:
            tok = tokens.view(n, T).long()
            h = self.p["wte"][tok] + self.p["wpe"].unsqueeze(0)
        else:
            h = inp.view(n, T, C)
        mask = torch.ones(T, T, dtype=torch.bool, device=self.dev).triu(1)

        def block(h, i):
            p = lambda s: self.p["h%d.%s" % (i, s)]
            a = F.layer_norm(h, (C,), p("ln1.w"), p("ln1.b"), 1e-5)
            qkv = F.linear(a, p("attn.qkv.w"), p("attn.qkv.b"))
            q, k, v = qkv.split(C, dim=2)
            hd = C // H
            q = q.view(n, T, H, hd).transpose(1, 2)
            k = k.view(n, T, H, hd).transpose(1, 2)
            v = v.view(n, T, H, hd).transpose(1, 2)
            y = self.attend(q, k, v, mask).transpose(1, 2).reshape(n, T, C)
            h = h + F.linear(y, p("attn.proj.w"), p("attn.proj.b"))
            a = F.layer_norm(h, (C,), p("ln2.w"), p("ln2.b"), 1e-5)
            return h + F.linear(F.gelu(F.linear(a, p("mlp.fc.w"), p("mlp.fc.b")), approximate="tanh"), p("mlp.proj.w"), p("mlp.proj.b"))

        for i in range(self.start, self.end):
            h = self.run_block(block, h, i)
        if self.last:
            h = F.layer_norm(h, (C,), self.p["lnf.w"], self.p["lnf.b"], 1e-5)
            h = F.linear(h, self.p["head.w"])
        return h

    def run_block(self, block, h, i):
        # With activation checkpointing a training forward keeps only h;
        # the backward recomputes the block (non-reentrant: the parameters
        # the block reads get their gradients as without it).
        if self.ckpt and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(block, h, i, use_reentrant=False)
        return block(h, i)

    def rope_tables(self):
        # cos and sin [T, hd/2] of t * theta^(-2i/hd), in float64 as
        # engine/native computes them, then rounded to float32.
        m = self.model
        if getattr(self, "_rope", None) is None:
            T, hd = m["block_size"], m["n_embd"] // m["n_head"]
            inv = float(m["rope_theta"]) ** (-2.0 * torch.arange(hd // 2, dtype=torch.float64) / hd)
            ang = torch.arange(T, dtype=torch.float64).unsqueeze(1) * inv.unsqueeze(0)
            self._rope = (ang.cos().float().to(self.dev), ang.sin().float().to(self.dev))
        return self._rope

    def run_llama(self, n, tokens, inp):
        # engine/native's llama: RMSNorm (eps 1e-5), rotary embeddings on
        # pairs (i, i + hd/2), grouped-query attention, SwiGLU, no biases.
        m = self.model
        T, C, H, KV, hd = m["block_size"], m["n_embd"], m["n_head"], m["n_kv_head"], m["n_embd"] // m["n_head"]
        half = hd // 2
        cos, sin = self.rope_tables()

        def rms(x, w):
            x = x.float()  # the residual stream stays float32 under autocast
            return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-5) * w

        def rope(x):  # [n, heads, T, hd]
            a, b = x[..., :half], x[..., half:]
            return torch.cat((a * cos - b * sin, b * cos + a * sin), dim=-1).to(x.dtype)

        if self.first:
            h = self.p["wte"][tokens.view(n, T).long()]
        else:
            h = inp.view(n, T, C)
        mask = torch.ones(T, T, dtype=torch.bool, device=self.dev).triu(1)

        def block(h, i):
            p = lambda s: self.p["h%d.%s" % (i, s)]
            a = rms(h, p("attn_norm.w"))
            q = rope(F.linear(a, p("attn.q.w")).view(n, T, H, hd).transpose(1, 2))
            k = rope(F.linear(a, p("attn.k.w")).view(n, T, KV, hd).transpose(1, 2))
            v = F.linear(a, p("attn.v.w")).view(n, T, KV, hd).transpose(1, 2)
            if KV != H:  # query head j reads key/value head j // (H / KV)
                k = k.repeat_interleave(H // KV, dim=1)
                v = v.repeat_interleave(H // KV, dim=1)
            y = self.attend(q, k, v, mask).transpose(1, 2).reshape(n, T, C)
            h = h + F.linear(y, p("attn.o.w"))
            a = rms(h, p("mlp_norm.w"))
            return h + F.linear(F.silu(F.linear(a, p("mlp.gate.w"))) * F.linear(a, p("mlp.up.w")), p("mlp.down.w"))

        for i in range(self.start, self.end):
            h = self.run_block(block, h, i)
        if self.last:
            h = rms(h, self.p["norm.w"])
            h = F.linear(h, self.p["wte"] if m.get("tie_embeddings") else self.p["head.w"])
        return h

    def forward(self, meta, tensors):
        n, train, tape = int(meta["n"]), bool(meta["train"]), int(meta.get("tape", 0))
        it = iter(tensors)
        x = tokens = inp = targets = None
        if self.first:
            if self.arch == "mlp-mnist":
                x = next(it).to(self.dev, non_blocking=True).view(n, -1)
            else:
                tokens = next(it).to(self.dev, non_blocking=True)
        else:
            inp = next(it).to(self.dev, non_blocking=True)
        if self.last:
            targets = next(it).to(self.dev, non_blocking=True).long().view(-1)
        if train and inp is not None:
            inp.requires_grad_(True)
        # torch.autocast("cuda", ...) asserts on a torch built without CUDA,
        # even disabled: enter it only on the bf16 path.
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with torch.set_grad_enabled(train), amp:
            out = self.model_fn(n, x, tokens, inp)
        if self.last:
            # The loss in float32 whatever the logits' precision.
            logits = out.reshape(targets.numel(), -1).float()
            loss = F.cross_entropy(logits, targets)
            if train:
                self.tapes[tape] = (inp, loss)
                if meta.get("defer_loss"):
                    # Summed on the device; TAKE_LOSS reads it (one host
                    # sync per optimizer step, not per micro-batch).
                    d = loss.detach() * n
                    self.loss_sum = d if self.loss_sum is None else self.loss_sum + d
                    self.loss_n += n
                    return {"deferred": True}, []
                return {"loss": float(loss.item())}, []
            return {"loss": float(loss.item())}, [out.float()]
        if train:
            self.tapes[tape] = (inp, out)
        return {}, [out.reshape(n, -1)]

    def take_loss(self):
        total = 0.0 if self.loss_sum is None else float(self.loss_sum.item())
        n = self.loss_n
        self.loss_sum, self.loss_n = None, 0
        return {"sum": total, "n": n}

    def backward(self, meta, tensors):
        tape = int(meta["tape"])
        if tape not in self.tapes:
            raise KeyError("unknown tape %d" % tape)
        inp, out = self.tapes.pop(tape)
        if self.last:
            out.backward()
        else:
            out.backward(tensors[0].to(self.dev, non_blocking=True).view_as(out).to(out.dtype))
        self.keep_grads_flat()
        if inp is None:
            return {}, []
        return {}, [inp.grad]

    def grad_norm_sq(self):
        return float(self.flat_g.double().pow(2).sum().item())

    @torch.no_grad()
    def do_step(self, lr, scale):
        # aminmax propagates NaN and Inf, and is one pass without a mask.
        if self.numel and not bool(torch.isfinite(torch.stack(torch.aminmax(self.flat_g))).all()):
            for name, g in zip(self.names, self.grads()):
                if not bool(torch.isfinite(g).all()):
                    raise NonFinite("gradient of %s holds NaN or Inf" % name)
        # Element by element the same operations as engine/native, on the flat
        # buffers; weight decay on the views of the decayed tensors.
        o = self.opt
        wd = float(o.get("weight_decay", 0.0))
        t = self.step + 1
        p = self.flat_p
        g = self.flat_g if scale == 1.0 else self.flat_g * scale  # x*1 is x exactly
        views = []
        off = 0
        for i, size in enumerate(self.sizes):
            if self.decay[i] and wd != 0.0:
                views.append((off, size))
            off += size
        if o["name"] == "adamw":
            b1, b2, eps = float(o["beta1"]), float(o["beta2"]), float(o["eps"])
            c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
            m, v = self.flat_s[:self.numel], self.flat_s[self.numel:]
            m.mul_(b1).add_(g, alpha=1.0 - b1)
            v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
            for a, n in views:
                p[a:a + n].mul_(1.0 - lr * wd)
            # p -= lr * ((m / c1) / (sqrt(v / c2) + eps)), with fewer temporaries
            denom = (v / c2).sqrt_().add_(eps)
            p.sub_((m / c1).div_(denom).mul_(lr))
        else:
            mu = float(o.get("momentum", 0.0))
            if views and g is self.flat_g:
                g = g.clone()
            for a, n in views:
                g[a:a + n].add_(wd * p[a:a + n])
            buf = self.flat_s
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
                info = {"device": shard.dev.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
                        "precision": shard.precision, "sdpa": shard.sdpa, "compiled": shard.compiled,
                        "checkpoint_activations": shard.ckpt}
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
                shard.flat_g.zero_()
                reply = ({}, [])
            elif typ == T_GRAD_NORM:
                reply = ({"normsq": shard.grad_norm_sq()}, [])
            elif typ == T_STEP:
                shard.do_step(float(meta["lr"]), float(meta["scale"]))
                reply = ({"step": shard.step}, [])
            elif typ == T_GET_STATE:
                what = meta.get("what", [])
                reply = ({"step": shard.step}, shard.get_state(what))
            elif typ == T_SET_STATE:
                shard.set_state(meta, tensors)
                reply = ({}, [])
            elif typ == T_TAKE_LOSS:
                reply = (shard.take_loss(), [])
            else:
                raise ValueError("unknown message type %d" % typ)
        except NonFinite as exc:
            proto.send(T_ERROR, rid, {"error": str(exc), "kind": "nonfinite"})
            continue
        except KeyError as exc:
            proto.send(T_ERROR, rid, {"error": str(exc), "kind": "tape"})
            continue
        except Exception as exc:
            if not is_oom(exc):
                proto.send(T_ERROR, rid, {"error": "%s: %s" % (type(exc).__name__, exc)})
                continue
            # Free the cached blocks the failed request left, and say what
            # would fit.
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            n = int(meta.get("n", 0)) if isinstance(meta, dict) else 0
            msg = "CUDA out of memory"
            if n > 1:
                msg += " at a micro-batch of %d samples; try training.batch_size %d or less" % (n, n // 2)
            proto.send(T_ERROR, rid, {"error": "%s (%s)" % (msg, str(exc).splitlines()[0] if str(exc) else type(exc).__name__), "kind": "oom"})
            continue
        proto.send(T_OK, rid, reply[0], reply[1])


if __name__ == "__main__":
    main()
