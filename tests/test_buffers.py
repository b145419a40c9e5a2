"""Buffers handed to the codec: blobs must be contiguous bytes, outputs writable and disjoint
(from each other and from the blob), thread counts bounded, and a failed thread start is an
exception, never an abort."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from kvgen import synthetic_kv

import cachegen

KV = synthetic_kv(2, 24, 2, 16)


@pytest.fixture(scope="module")
def blob() -> bytes:
    return cachegen.encode(KV)


@pytest.mark.parametrize("view", [lambda mv: mv[::-1], lambda mv: mv[::2]])
def test_strided_blob_views_are_refused(blob, view):
    """A reversed or strided memoryview is not the bytes its pointer starts at."""
    mv = view(memoryview(blob + blob[::-1]))
    with pytest.raises(ValueError, match="C-contiguous"):
        cachegen.inspect(mv)
    with pytest.raises(ValueError, match="C-contiguous"):
        cachegen.decode(mv)


def test_contiguous_slice_of_a_larger_buffer_is_accepted(blob):
    mv = memoryview(b"xx" + blob + b"yy")[2:-2]
    np.testing.assert_array_equal(cachegen.decode(mv), cachegen.decode(blob))


def test_output_requiring_grad_is_refused(blob):
    torch = pytest.importorskip("torch")
    out = torch.empty(KV.shape, dtype=torch.float16, requires_grad=True)
    with pytest.raises(ValueError, match="requires grad"):
        cachegen.decode(blob, out=out)


def test_outputs_sharing_elements_are_refused():
    pairs = synthetic_kv(2, 24, 2, 16, layout="pairs")
    blob = cachegen.encode(pairs)
    same = np.empty((1, 2, 24, 16), np.float16)
    with pytest.raises(ValueError, match="groups 0 and 1 share elements"):
        cachegen.decode(blob, out=[(same, same), (np.empty_like(same), np.empty_like(same))])
    # Layer 1's K overlaps layer 0's V by one token (a shifted view of one allocation).
    buf = np.empty((1, 2, 49, 16), np.float16)
    out = [(np.empty_like(same), buf[:, :, :24]), (buf[:, :, 23:47], np.empty_like(same))]
    with pytest.raises(ValueError, match="groups 1 and 2 share elements"):
        cachegen.decode(blob, out=out)


def test_broadcast_output_is_refused(blob):
    row = np.empty(16, np.float16)
    out = np.lib.stride_tricks.as_strided(row, KV.shape, (0, 0, 0, 0, 2))
    with pytest.raises(ValueError, match="several elements to one address"):
        cachegen.decode(blob, out=out)


def test_interleaved_views_into_one_allocation_are_accepted():
    """K and V as the two halves of one [.., 2 * head_dim] buffer (a paged engine's layout):
    interleaved address ranges, no shared element."""
    pairs = synthetic_kv(2, 24, 2, 16, layout="pairs")
    blob = cachegen.encode(pairs)
    buf = np.empty((2, 1, 2, 24, 32), np.float16)
    out = [(buf[layer, ..., :16], buf[layer, ..., 16:]) for layer in range(2)]
    cachegen.decode(blob, out=out)
    want = cachegen.decode(blob)
    for got_pair, want_pair in zip(out, want, strict=True):
        for got, ref in zip(got_pair, want_pair, strict=True):
            np.testing.assert_array_equal(got, ref)


def test_output_overlapping_the_blob_is_refused(blob):
    nbytes = KV.nbytes
    arena = bytearray(len(blob) + nbytes + 2)
    arena[: len(blob)] = blob
    src = memoryview(arena)[: len(blob)]
    inside = np.frombuffer(arena, np.float16, count=KV.size, offset=0).reshape(KV.shape)
    with pytest.raises(ValueError, match="overlaps the blob"):
        cachegen.decode(src, out=inside)
    after = (len(blob) + 1) // 2 * 2
    beside = np.frombuffer(arena, np.float16, count=KV.size, offset=after).reshape(KV.shape)
    cachegen.decode(src, out=beside)
    np.testing.assert_array_equal(beside, cachegen.decode(blob))


@pytest.mark.parametrize("threads", [-1, cachegen.api.MAX_THREADS + 1, 10**9, 2.0])
def test_thread_counts_are_bounded(blob, threads):
    with pytest.raises(ValueError, match="threads must be"):
        cachegen.decode(blob, threads=threads)
    with pytest.raises(ValueError, match="threads must be"):
        cachegen.encode(KV, threads=threads)


def test_failed_thread_start_is_not_an_abort():
    """Address space capped just above what the process uses: worker stacks cannot be mapped.
    The decode runs on the threads it could start (the caller's at least) and gives the same
    values; the process lives on instead of aborting."""
    script = textwrap.dedent(
        """
        import resource
        import numpy as np
        import cachegen
        kv = np.random.default_rng(0).standard_normal((4, 2, 512, 2, 64)).astype(np.float16)
        blob = cachegen.encode(kv, config=cachegen.CodecConfig(segment_symbols=1024), threads=1)
        want = cachegen.decode(blob, threads=1)
        out = np.empty_like(kv)
        status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
        limit = int(status) * 1024 + (32 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        cachegen.decode(blob, out=out, threads=256)
        print("equal:", np.array_equal(out, want))
        print("alive")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "equal: True" in run.stdout
    assert "alive" in run.stdout


def test_forked_child_decodes_after_the_parent_used_threads():
    """The worker threads live across calls, and a forked child (multiprocessing's default on
    Linux) has none of them: its decode starts threads of its own rather than wait forever."""
    script = textwrap.dedent(
        """
        import os
        import numpy as np
        import cachegen
        kv = np.random.default_rng(1).standard_normal((4, 2, 512, 2, 64)).astype(np.float16)
        blob = cachegen.encode(kv, config=cachegen.CodecConfig(segment_symbols=1024), threads=3)
        want = cachegen.decode(blob, threads=3)
        pid = os.fork()
        if pid == 0:
            same = np.array_equal(cachegen.decode(blob, threads=3), want)
            same &= cachegen.encode(kv, config=cachegen.CodecConfig(segment_symbols=1024),
                                    threads=3) == blob
            os._exit(0 if same else 1)
        _, status = os.waitpid(pid, 0)
        print("child exit:", os.waitstatus_to_exitcode(status))
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    assert "child exit: 0" in run.stdout


def test_inference_tensor_output_is_accepted(blob):
    """An inference tensor (what engines allocate under torch.inference_mode) is plain writable
    memory: decode writes it from outside inference mode too."""
    torch = pytest.importorskip("torch")
    with torch.inference_mode():
        out = torch.empty(KV.shape, dtype=torch.float16)
    assert out.is_inference()
    cachegen.decode(blob, out=out)
    np.testing.assert_array_equal(out.numpy(), cachegen.decode(blob))
