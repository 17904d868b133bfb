"""jnn: neural networks as pairs of pure JAX functions over plain dicts of arrays.

A model is an immutable object holding hyperparameters, with ``init`` and ``apply``::

    model = jnn.MLP([128, 10])
    params = model.init(jax.random.key(0), x_sample)   # nested dict of arrays
    logits = model.apply(params, x)                    # pure: jit, grad, vmap, scan

"""

from jnn import activations, extend, initializers
from jnn._adaptive_pooling import AdaptiveAvgPool, AdaptiveMaxPool, GlobalAvgPool, GlobalMaxPool
from jnn._attention import MultiHeadAttention
from jnn._attribution import saliency, smooth_grad
from jnn._batch_norm import BatchNorm
from jnn._batching import batches
from jnn._bidirectional import Bidirectional
from jnn._binary_losses import binary_cross_entropy, sigmoid_binary_cross_entropy
from jnn._callbacks import Callback, as_callbacks
from jnn._categorical_losses import (
    softmax_cross_entropy,
    softmax_cross_entropy_with_integer_labels,
)
from jnn._cells import GRUCell, LSTMCell, SimpleRNNCell
from jnn._checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from jnn._checkpoint_files import CheckpointError
from jnn._checkpoint_manager import CheckpointManager
from jnn._combinators import (
    FunctionModule,
    Identity,
    Lambda,
    Parallel,
    Repeat,
    Residual,
    Sequential,
    from_functions,
)
from jnn._conv import Conv
from jnn._conv_transpose import ConvTranspose
from jnn._dense import MLP, Dense
from jnn._divergences import kl_divergence
from jnn._drawing import draw_network
from jnn._dropout import Dropout
from jnn._early_stopping import EarlyStopping
from jnn._embedding import Embedding
from jnn._errors import DTypeError, LayerError, MissingKeyError, ParamsError, ShapeError
from jnn._fit import FitResult, fit
from jnn._freezing import freeze
from jnn._group_norm import GroupNorm, InstanceNorm
from jnn._history_plot import plot_history
from jnn._integrated_gradients import integrated_gradients
from jnn._json_lines import JSONLinesLogger, history_from_json_lines, read_json_lines
from jnn._language_model import TransformerLM
from jnn._loops import NonFiniteError
from jnn._loss_scale import DynamicLossScale
from jnn._masks import causal_mask, combine_masks, padding_mask
from jnn._metrics import Mean, accuracy, confusion_matrix, top_k_accuracy
from jnn._module import Module, Params, State
from jnn._norm import LayerNorm, RMSNorm
from jnn._partition import fully_sharded_specs, partition_specs, tensor_parallel_rules
from jnn._pooling import AvgPool, MaxPool
from jnn._positional import (
    LearnedPositions,
    SinusoidalPositions,
    rotary_embedding,
    sinusoidal_positions,
)
from jnn._precision import MixedPrecision, Policy
from jnn._prelu import PReLU
from jnn._profile import StepProfile, profile_step
from jnn._regression_losses import huber, mean_absolute_error, mean_squared_error
from jnn._reshape import Flatten, Reshape
from jnn._rnn import RNN
from jnn._scope import Scope
from jnn._sharding import (
    batch_sharding,
    fully_sharded,
    make_mesh,
    named_shardings,
    shard,
    shard_batch,
)
from jnn._step import make_train_step
from jnn._summary import LayerSummary, Summary, summary
from jnn._train_state import TrainState, epoch_key, init_train_state, step_key
from jnn._training import evaluate, make_eval_step
from jnn._transformer import TransformerBlock
from jnn._upsample import Upsample
from jnn.activations import (
    elu,
    gelu,
    identity,
    leaky_relu,
    log_softmax,
    relu,
    selu,
    sigmoid,
    silu,
    softmax,
    softplus,
    swish,
    tanh,
)

__version__ = "0.1.0"

__all__ = [
    # contract
    "Module",
    "Scope",
    "Params",
    "State",
    "LayerError",
    "ShapeError",
    "DTypeError",
    "ParamsError",
    "MissingKeyError",
    "extend",
    # layers
    "Dense",
    "MLP",
    "Conv",
    "ConvTranspose",
    "MaxPool",
    "AvgPool",
    "GlobalMaxPool",
    "GlobalAvgPool",
    "AdaptiveAvgPool",
    "AdaptiveMaxPool",
    "Upsample",
    "Flatten",
    "Reshape",
    "PReLU",
    "Dropout",
    "Embedding",
    "SimpleRNNCell",
    "LSTMCell",
    "GRUCell",
    "RNN",
    "Bidirectional",
    "MultiHeadAttention",
    "causal_mask",
    "padding_mask",
    "combine_masks",
    "SinusoidalPositions",
    "LearnedPositions",
    "sinusoidal_positions",
    "rotary_embedding",
    "TransformerBlock",
    "TransformerLM",
    "BatchNorm",
    "LayerNorm",
    "GroupNorm",
    "InstanceNorm",
    "RMSNorm",
    "Lambda",
    "Identity",
    "Sequential",
    "Residual",
    "Parallel",
    "Repeat",
    "FunctionModule",
    "from_functions",
    # activations
    "activations",
    "sigmoid",
    "relu",
    "tanh",
    "softmax",
    "log_softmax",
    "leaky_relu",
    "elu",
    "selu",
    "gelu",
    "silu",
    "swish",
    "softplus",
    "identity",
    # initializers
    "initializers",
    # losses
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
    "binary_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
    "kl_divergence",
    # metrics
    "accuracy",
    "top_k_accuracy",
    "confusion_matrix",
    "Mean",
    # training
    "TrainState",
    "init_train_state",
    "step_key",
    "epoch_key",
    "make_train_step",
    "make_eval_step",
    "evaluate",
    "batches",
    "fit",
    "FitResult",
    "NonFiniteError",
    "EarlyStopping",
    "Callback",
    "JSONLinesLogger",
    "read_json_lines",
    "history_from_json_lines",
    "as_callbacks",
    "plot_history",
    "freeze",
    # mixed precision
    "Policy",
    "MixedPrecision",
    "DynamicLossScale",
    # checkpoints
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_metadata",
    "CheckpointManager",
    "CheckpointError",
    # sharding
    "make_mesh",
    "partition_specs",
    "named_shardings",
    "shard",
    "fully_sharded_specs",
    "fully_sharded",
    "batch_sharding",
    "shard_batch",
    "tensor_parallel_rules",
    # seeing the model
    "summary",
    "Summary",
    "LayerSummary",
    # profiling
    "profile_step",
    "StepProfile",
    # attribution and drawing
    "saliency",
    "integrated_gradients",
    "smooth_grad",
    "draw_network",
]
