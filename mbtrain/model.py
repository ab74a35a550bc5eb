"""The multilayer perceptron: parameters, init, and forward/backward vectorized over the minibatch.

Layer l (1..L) has m neurons, layer l-1 has n, a minibatch has K samples in rows.
W[l] is (m, n): row i is neuron i of layer l, column j is neuron j of layer l-1 ("to, from",
like torch.nn.Linear.weight).

    forward:  Z = A_prev @ W.T + b                 (K, m)  (b in Z first for wide layers)
              A = sigma(Z)
    backward: dW = dZ.T @ A_prev                   (m, n) = sum_k delta_k a_k^T
              db = dZ.sum(axis=0)                  (m,)
              dZ_prev = (dZ @ W) * sigma'(Z_prev)  (K, n)

Activations, errors and gradients live in buffers allocated once per batch size and reused.

The input layer's W (and its gradient and optimizer state) is stored column-major when it has
64 to 512 neurons (weight_order): its two products, A_prev @ W.T and dZ.T @ A_prev, then ran
2-30 % faster together with numpy's OpenBLAS (one thread, 784 inputs, batches of 10 to 256;
12 % at bench setting A, 784-100-10, batch 64); with 30 neurons (Nielsen's) 3-76 % slower,
with 1024 no faster. Hidden layers stay row-major: their third product, dZ @ W, ran slower on
a column-major 1024 x 1024 W (README, "Why it is fast"). Only speed depends on it: W is the
same (m, n) array to every reader, and checkpoints store it row-major.

    mbtrain fit configs/mnist.yaml
"""

from __future__ import annotations

import numpy as np

from mbtrain import activations, flat, gemm, losses, rowops


# input layers this wide store W column-major (see the module docstring)
COLUMN_MAJOR_WIDTHS = range(64, 513)


# Row-major layers this wide get their bias from the forward product itself (Z = b, then
# Z += A_prev @ W.T through mbtrain.gemm): one pass over Z less than `Z += b`, which OpenBLAS
# otherwise spends zeroing Z. In B's steps (784-1024-1024-10, batch 256) the forward products and
# bias adds took 0.97 of their time on two BLAS threads, 0.99 on one; with 100 neurons no gain,
# and on a column-major input layer (weight_order: mnist.yaml's 512, mnist-fast.yaml's 256) 1.04,
# slower (README, "Why it is fast").
BIAS_IN_PRODUCT_WIDTH = 256


def bias_in_product(l: int, m: int, dtype) -> bool:
    """True when forward() makes layer l's Z (m neurons) as Z = b, then Z += A_prev @ W.T (gemm)."""
    return m >= BIAS_IN_PRODUCT_WIDTH and weight_order(l, m) == "C" and gemm.available(dtype)


def weight_order(l: int, m: int) -> str:
    """Memory order of layer l's W (m, n): "F" (column-major) or "C" (row-major)."""
    return "F" if l == 0 and m in COLUMN_MAJOR_WIDTHS else "C"


def weight_gradient(dZ: np.ndarray, A_prev: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = dZ.T @ A_prev (m, n) for dZ (K, m), A_prev (K, n); out row- or column-major."""
    if out.flags.c_contiguous:
        return gemm.matmul(dZ.T, A_prev, out=out)
    gemm.matmul(A_prev.T, dZ, out=out.T)              # column-major out: its transpose, row-major (n, m)
    return out


def init_params(layers: list[int], init: str, bias_init: str, activation: str,
                rng: np.random.Generator, dtype) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] with W_l (layers[l+1], layers[l]) and b_l (layers[l+1],)."""
    if init == "auto":
        init = "he" if activation in ("relu", "leaky_relu") else "xavier"
    params = []
    for n, m in zip(layers[:-1], layers[1:]):
        if init == "normal":                       # Nielsen ch. 1: N(0, 1)
            W = rng.standard_normal((m, n))
        elif init == "scaled_normal":              # Nielsen ch. 3: N(0, 1/n_in)
            W = rng.standard_normal((m, n)) / np.sqrt(n)
        elif init == "xavier":                     # Glorot uniform: U(-a, a), a = sqrt(6/(n+m))
            a = np.sqrt(6.0 / (n + m))
            W = rng.uniform(-a, a, size=(m, n))
        elif init == "xavier_normal":              # Glorot normal: N(0, 2/(n+m))
            W = rng.standard_normal((m, n)) * np.sqrt(2.0 / (n + m))
        elif init == "he":                         # He normal: N(0, 2/n_in)
            W = rng.standard_normal((m, n)) * np.sqrt(2.0 / n)
        elif init == "he_uniform":                 # He uniform: U(-a, a), a = sqrt(6/n_in)
            a = np.sqrt(6.0 / n)
            W = rng.uniform(-a, a, size=(m, n))
        else:
            raise ValueError(f"unknown init {init!r}")
        b = rng.standard_normal(m) if bias_init == "normal" else np.zeros(m)
        params += [W.astype(dtype), b.astype(dtype)]
    return params


class MLP:
    """Weights, biases and the reusable buffers of one network.

    params: [W0, b0, W1, b1, ...] (copied in); grads: the same shapes, filled by backward().
    Each list is packed into one buffer (mbtrain.flat), so an optimizer step or the gradient's
    norm is one pass over a buffer (grad_buffer for the gradients) rather than a few numpy calls
    per array.
    """

    def __init__(self, params: list[np.ndarray], activation: str, output: str):
        orders = [o for l, W in enumerate(params[0::2]) for o in (weight_order(l, W.shape[0]), "C")]
        self.params = flat.pack(params, orders=orders)                # grads and optimizer state follow
        self.grads = flat.zeros_like(self.params)
        self.grad_buffer = flat.buffer(self.grads)
        self._bias_rows = [b.reshape(1, -1) for b in self.params[1::2]]   # each b as a (1, m) row, for sgd_update
        self.activation_name, self.output_name = activation, output
        self.act = activations.get(activation)
        self.out = losses.get(output)
        self.dtype = params[0].dtype
        self.layers = [params[0].shape[1]] + [W.shape[0] for W in params[0::2]]
        self._K = None
        self.masks = None
        # set by a fused training step (mbtrain.step): forward() and backward_errors() then note the
        # sum of squares of each hidden layer's input and each error while it is still in cache, for
        # the guard (mbtrain.guard.vouch_from_squares; taken afterwards, the four at bench-b's
        # 256 x 1024 took ~210 us, right after each was written ~100 us)
        self.squares = False
        L = len(self.layers) - 1
        self.input_squares = [0.0] * L                       # ||A_prev||^2 per layer (squares; [0] the caller's)
        self.error_squares = [0.0] * L                       # ||dZ||^2 per layer (squares)
        self._bias_in_product = [bias_in_product(l, m, self.dtype) for l, m in enumerate(self.layers[1:])]

    @property
    def weights(self):
        return self.params[0::2]

    @property
    def biases(self):
        return self.params[1::2]

    def _buffers(self, K: int) -> None:
        """Allocate Z, A, dZ, dA and sigma' buffers for batch size K (once per K)."""
        if self._K == K:
            return
        make = lambda m: flat.aligned((K, m), self.dtype)       # cache-line aligned, like the params
        self.Z = [make(m) for m in self.layers[1:]]          # (K, m) per layer
        self.A = [make(m) for m in self.layers[1:-1]]        # hidden activations
        self.A_dropped = [make(m) for m in self.layers[1:-1]]  # A * dropout mask, when masks are given
        self.dZ = [make(m) for m in self.layers[1:]]         # errors dC/dZ per layer
        dact_dtype = bool if self.act.step_derivative else self.dtype   # a 0/1 sigma' is a mask
        self.dact = [flat.aligned((K, m), dact_dtype) for m in self.layers[1:-1]]   # sigma'(Z) of hidden layers
        self._products = {}                                  # gemm.Product per (kind, layer), made at first use
        self._ones_row = rowops.ones(K, self.dtype).reshape(1, K)   # sgd_update's b = b - lr 1^T dZ
        self._K = K

    def forward(self, X: np.ndarray, masks: list[np.ndarray] | None = None) -> np.ndarray:
        """Z of the output layer (K, m_L) for inputs X (K, n_0); keeps every Z and A for backward.

        masks: optional inverted-dropout masks, one (K, m) array per hidden layer (mbtrain.dropout);
        the next layer then sees A * mask, and backward() multiplies the errors by the same mask.
        """
        self._buffers(X.shape[0])
        self.X, self.masks = X, masks
        A_prev = X
        L = len(self.Z)
        for l, (W, b) in enumerate(zip(self.weights, self.biases)):
            if self._bias_in_product[l] and A_prev.flags.c_contiguous and A_prev.dtype == W.dtype:
                Z = self.Z[l]
                np.copyto(Z, b)                                    # Z = b, then Z += A_prev @ W.T
                self._product("forward", l, Z, A_prev, False, W, True)(1.0, 1.0, A=A_prev)
            else:
                Z = gemm.matmul(A_prev, W.T, out=self.Z[l])             # (K, m)
                Z += b
            if l < L - 1:
                A_prev = self.act.forward(Z, out=self.A[l])        # (K, m)
                if masks is not None:                              # A stays undropped for sigma'
                    A_prev = np.multiply(A_prev, masks[l], out=self.A_dropped[l])
                if self.squares:
                    self.input_squares[l + 1] = float(np.vdot(A_prev, A_prev))
        return self.Z[-1]

    def _layer_input(self, l: int) -> np.ndarray:
        """What layer l saw in the last forward(): X, A[l-1], or A[l-1] * mask (K, n)."""
        if l == 0:
            return self.X
        return self.A_dropped[l - 1] if self.masks is not None else self.A[l - 1]

    def loss_and_backward(self, Y: np.ndarray) -> float:
        """Mean loss of the last forward() batch against targets Y (K, m_L); fills self.grads."""
        loss, dZ = self.out.loss_and_delta(self.Z[-1], Y, self.dZ[-1])     # (K, m_L)
        self.backward(dZ)
        return loss

    def loss_and_errors(self, Y: np.ndarray) -> float:
        """Mean loss of the last forward() batch against Y (K, m_L); fills every layer's errors."""
        loss, dZ = self.out.loss_and_delta(self.Z[-1], Y, self.dZ[-1])     # (K, m_L)
        self.backward_errors(dZ)
        return loss

    def layer_inputs(self) -> list[np.ndarray]:
        """What each layer saw in the last forward(): [X, A_1, ...] (dropped out when masks were given)."""
        return [self._layer_input(l) for l in range(len(self.Z))]

    def backward(self, dZ: np.ndarray) -> None:
        """Fill self.grads from the output error dZ (K, m_L) of the last forward()."""
        self.backward_errors(dZ)
        self.bias_gradients()
        self.weight_gradients()

    def weight_gradients(self) -> None:
        """dW of every layer into self.grads, from the errors of backward_errors()."""
        for l in range(len(self.Z)):
            weight_gradient(self.dZ[l], self._layer_input(l), self.grads[2 * l])   # dW = dZ.T @ A_prev  (m, n)

    def bias_gradients(self) -> None:
        """db = dZ.sum(0) of every layer into self.grads, from the errors of backward_errors()."""
        for l in range(len(self.Z)):
            rowops.column_sums(self.dZ[l], out=self.grads[2 * l + 1])   # (m,)

    def backward_errors(self, dZ: np.ndarray) -> None:
        """Every layer's error dZ (K, m) into self.dZ, from the output error dZ.

        Everything of backward() but the gradients (bias_gradients, weight_gradients), which plain
        SGD folds into the update itself (sgd_update).
        """
        if dZ is not self.dZ[-1]:
            np.copyto(self.dZ[-1], dZ)
            dZ = self.dZ[-1]
        if self.squares:
            self.error_squares[-1] = float(np.vdot(dZ, dZ))
        for l in range(len(self.Z) - 1, 0, -1):                  # the input layer's error is not needed
            dZ_prev = gemm.matmul(dZ, self.params[2 * l], out=self.dZ[l - 1])   # dZ @ W   (K, n)
            if self.masks is not None:
                dZ_prev *= self.masks[l - 1]                       # d(A * mask)/dA = mask
            dZ_prev *= self.act.derivative(self.Z[l - 1], self.A[l - 1], out=self.dact[l - 1])
            if self.squares:
                self.error_squares[l - 1] = float(np.vdot(dZ_prev, dZ_prev))
            dZ = dZ_prev

    def sgd_update(self, lr, inputs: list[np.ndarray]) -> None:
        """Plain SGD on every layer, each step made by a product itself: b -= lr * ones^T dZ and
        W -= lr * dZ.T @ A_prev.

        Call after backward_errors(); needs gemm.available(self.dtype). No dW or db array is formed.
        lr: a scalar of the model's dtype; inputs: layer_inputs() of this batch (the caller's guard
        has them already).
        """
        for l, A_prev in enumerate(inputs):
            dZ = self.dZ[l]
            bias = self._product("bias", l, self._bias_rows[l], self._ones_row, False, dZ, False)
            bias(-lr, 1.0)                                               # b = 1 b + (-lr) 1^T dZ   (1, m)
            update = self._product("update", l, self.params[2 * l], dZ, True, A_prev, False)
            update(-lr, 1.0, B=A_prev)                                   # W = 1 W + (-lr) dZ^T A_prev

    def _product(self, kind: str, l: int, C, A, trans_a: bool, B, trans_b: bool) -> gemm.Product:
        """The gemm.Product of layer l's `kind` ("forward", "bias" or "update") on this batch size's buffers,
        made at its first use (its batch operand follows each call's)."""
        plan = self._products.get((kind, l))
        if plan is None:
            plan = self._products[kind, l] = gemm.Product(kind, C, A, trans_a, B, trans_b)
        return plan

    def predict(self, X: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Output activations (N, m_L) for X (N, n_0), in batches, without touching the buffers."""
        chunks = []
        for start in range(0, X.shape[0], batch_size):
            chunks.append(self.out.predict(self.logits(X[start:start + batch_size])))
        return np.concatenate(chunks) if chunks else np.empty((0, self.layers[-1]), self.dtype)

    def logits(self, X: np.ndarray) -> np.ndarray:
        """Output-layer Z (K, m_L) for X (K, n_0), allocating fresh arrays (for evaluation)."""
        A = X
        L = len(self.weights)
        for l, (W, b) in enumerate(zip(self.weights, self.biases)):
            Z = gemm.matmul(A, W.T, out=np.empty((A.shape[0], W.shape[0]), np.result_type(A, W)))   # A @ W.T
            Z += b
            A = self.act.forward(Z, out=Z) if l < L - 1 else Z
        return A
