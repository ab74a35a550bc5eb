"""mbtrain: multilayer perceptrons trained with backpropagation vectorized over the minibatch.

    mbtrain fit configs/mnist.yaml
"""

__version__ = "0.1.0"
