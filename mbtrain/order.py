"""The order samples are visited in each epoch (`data.shuffle`), in memory that does not grow with N.

Each order is a bijection of positions [0, N) onto rows [0, N), a pure function of
(seed, epoch), evaluated only for the positions of the batch at hand:

    full    a keyed pseudo-random permutation of all N rows (a Feistel network on the
            row index with cycle walking), so no N-long index array is ever held;
    blocks  contiguous blocks of `block_rows` rows in a shuffled order, then the rows of
            each window of `buffer_rows` positions shuffled among themselves: reads stay
            within a few blocks at a time, which suits disks;
    none    the stored order.

Deriving everything from (seed, epoch) rather than a generator's running state is what
makes a resumed run shuffle exactly as the uninterrupted one.

    mbtrain fit configs/mnist.yaml --set data.shuffle=blocks
"""

from __future__ import annotations

import numpy as np

SHUFFLES = ("full", "blocks", "none")
ROUNDS = 6
FULL_SPAN = 65536      # positions of a full shuffle computed at once (512 KiB of indices)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _rng(seed: int, epoch: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, epoch, *key)))


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-mixing hash of uint64 values (wraps modulo 2**64).

    Mixes z in place (one scratch array: half the memory traffic of fresh arrays) and returns it.
    """
    t = np.right_shift(z, np.uint64(30))
    z ^= t
    z *= _M1
    z ^= np.right_shift(z, np.uint64(27), out=t)
    z *= _M2
    z ^= np.right_shift(z, np.uint64(31), out=t)
    return z


class Permutation:
    """A keyed bijection of [0, n), evaluated for any positions in O(len(positions)) memory.

    A balanced Feistel network permutes [0, 2**bits) (2**bits < 4n); positions whose image
    falls outside [0, n) are mapped again until they land inside ("cycle walking"), which
    keeps it a bijection of [0, n).
    """

    def __init__(self, n: int, rng: np.random.Generator):
        self.n = n
        bits = max(2, (n - 1).bit_length())
        bits += bits % 2
        self.half, self.mask = np.uint64(bits // 2), np.uint64((1 << (bits // 2)) - 1)
        self.keys = rng.integers(0, 2**63, size=ROUNDS, dtype=np.uint64)

    def _feistel(self, v: np.ndarray) -> np.ndarray:
        left, right = v >> self.half, v & self.mask
        for key in self.keys:
            f = _mix(right ^ key)                   # a fresh array, mixed in place
            f &= self.mask
            f ^= left
            left, right = right, f
        return (left << self.half) | right

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """Rows (int64) at these positions, each in [0, n)."""
        out = self._feistel(np.asarray(positions, dtype=np.uint64))
        outside = out >= self.n
        while outside.any():
            out[outside] = self._feistel(out[outside])
            outside = out >= self.n
        return out.astype(np.int64)


class EpochOrder:
    """The rows of one epoch, position by position: `rows(lo, hi)` gives positions [lo, hi)."""

    def __init__(self, shuffle: str, n: int, seed: int, epoch: int,
                 block_rows: int = 4096, buffer_rows: int = 65536):
        if shuffle not in SHUFFLES:
            raise ValueError(f"unknown shuffle {shuffle!r}; expected one of {', '.join(SHUFFLES)}")
        self.shuffle, self.n, self.seed, self.epoch = shuffle, n, seed, epoch
        rng = _rng(seed, epoch)
        self._cached = (None, None)
        if shuffle == "full":
            self.perm = Permutation(n, rng)
            self.span = FULL_SPAN
        elif shuffle == "blocks":
            self.block = max(1, min(block_rows, n))
            self.full_blocks, self.tail = divmod(n, self.block)
            self.block_perm = Permutation(self.full_blocks, rng) if self.full_blocks else None
            # the short last block goes to a seeded slot among the full ones, not always last
            self.tail_slot = int(rng.integers(0, self.full_blocks + 1))
            self.span = -(-max(buffer_rows, 1) // self.block) * self.block   # whole blocks

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Row indices (hi - lo,) int64 at positions [lo, hi) of this epoch (read-only: may be a view)."""
        if self.shuffle == "none":
            return np.arange(lo, hi, dtype=np.int64)
        k = lo // self.span
        if hi <= (k + 1) * self.span:                      # within one span, as most batches are
            return self._span_rows(k)[lo - k * self.span:hi - k * self.span]
        out = np.empty(max(hi - lo, 0), np.int64)
        for k in range(lo // self.span, -(-hi // self.span)):
            k_lo, k_hi = max(lo, k * self.span), min(hi, (k + 1) * self.span)
            out[k_lo - lo:k_hi - lo] = self._span_rows(k)[k_lo - k * self.span:k_hi - k * self.span]
        return out

    def _span_rows(self, k: int) -> np.ndarray:
        """Rows at positions [k * span, (k + 1) * span), computed once per span (bounded memory)."""
        if self._cached[0] != k:
            start, stop = k * self.span, min(self.n, (k + 1) * self.span)
            if self.shuffle == "full":
                rows = self.perm(np.arange(start, stop, dtype=np.int64))
            else:      # a window of whole blocks, its positions shuffled within the window
                rows = self._block_rows(start + _rng(self.seed, self.epoch, k).permutation(stop - start))
            rows.flags.writeable = False           # shared by the batches that read it
            self._cached = (k, rows)
        return self._cached[1]

    def _block_rows(self, p: np.ndarray) -> np.ndarray:
        """Rows at positions p when whole blocks are laid out in the shuffled block order."""
        tail_lo = self.tail_slot * self.block
        in_tail = (p >= tail_lo) & (p < tail_lo + self.tail)
        q = np.where(p >= tail_lo + self.tail, p - self.tail, p)      # position among full blocks
        rows = np.empty(len(p), np.int64)
        full = ~in_tail
        if full.any():
            rows[full] = self.block_perm(q[full] // self.block) * self.block + q[full] % self.block
        rows[in_tail] = self.full_blocks * self.block + (p[in_tail] - tail_lo)
        return rows


def epoch_order(seed: int, epoch: int, n: int, shuffle: str = "full", block_rows: int = 4096,
                buffer_rows: int = 65536) -> np.ndarray:
    """The whole order of one epoch as an (n,) array (for tests and small data)."""
    return EpochOrder(shuffle, n, seed, epoch, block_rows, buffer_rows).rows(0, n).copy()
