"""Transformer encoder-decoder (Vaswani et al. 2017) from Hugging Face ``transformers``.

``MarianMTModel`` built from a ``MarianConfig`` with random weights: post-norm layers with
separate ``nn.Linear`` q/k/v/out and FFN projections (what every sparsity method wraps), one
embedding shared by encoder, decoder and the tied output layer, frozen sinusoidal position
tables, and ``generate()`` with beam search and a length penalty. fairseq has the same
architecture but cannot be installed beside hydra-core 1.3.

Layer selection: the position tables are ``nn.Embedding`` subclasses with ``requires_grad``
False, so masks.py never prunes them; ``lm_head.weight`` is the shared embedding, so it is
pruned once, under its first name ``model.shared.weight``.
"""

from __future__ import annotations

from torch import nn
from transformers import MarianConfig, MarianMTModel

from sparse_lightning.errors import ConfigError

PAD_ID = 0  # sentencepiece ids written by sparse_lightning.data.wmt; pad also starts decoding
EOS_ID = 2
EMBEDDING_NAME = "model.shared.weight"  # the one embedding (= output layer) tensor


def build_transformer(
    vocab_size: int,
    d_model: int = 512,
    ffn_dim: int = 2048,
    encoder_layers: int = 6,
    decoder_layers: int = 6,
    heads: int = 8,
    dropout: float = 0.1,
    max_positions: int = 512,
    pad_id: int = PAD_ID,
    eos_id: int = EOS_ID,
) -> MarianMTModel:
    """A randomly initialised Transformer with shared source/target/output embeddings.

    Init as in tensor2tensor: Glorot-uniform projections with zero bias, embeddings
    N(0, d_model^-0.5) scaled by sqrt(d_model) on input (so unit variance) and used unscaled as
    the output layer. Dropout ``dropout`` on residuals, attention weights and the FFN (ReLU).
    """
    if d_model % heads:
        raise ConfigError(f"model.d_model={d_model} is not divisible by model.heads={heads}")
    if vocab_size <= max(pad_id, eos_id):
        raise ConfigError(f"model.vocab_size={vocab_size} is too small")
    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        encoder_ffn_dim=ffn_dim,
        decoder_ffn_dim=ffn_dim,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        dropout=dropout,
        attention_dropout=dropout,
        activation_dropout=dropout,
        activation_function="relu",
        max_position_embeddings=max_positions,
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=pad_id,
        decoder_start_token_id=pad_id,
        forced_eos_token_id=eos_id,
    )
    model = MarianMTModel(config)
    init_t2t_(model, d_model)
    if model.lm_head.weight is not model.model.shared.weight:
        raise RuntimeError("transformers did not tie lm_head to the shared embedding")
    return model


def init_t2t_(model: nn.Module, d_model: int) -> None:
    """Glorot-uniform linear layers, zero biases, N(0, d^-0.5) trainable embeddings (in place).

    The output layer tied to the embedding is an embedding here: its table keeps N(0, d^-0.5),
    as tensor2tensor's shared embedding / softmax (sparse_modalities._get_weights), not Glorot
    (which would start a 32k x 512 table 5.6x smaller). Frozen tables (the sinusoidal positions)
    are left untouched.
    """
    embeddings = {
        id(m.weight) for m in model.modules() if type(m) is nn.Embedding and m.weight.requires_grad
    }
    for module in model.modules():
        if isinstance(module, nn.Linear):
            if id(module.weight) not in embeddings:
                nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    for module in model.modules():
        if type(module) is nn.Embedding and module.weight.requires_grad:
            nn.init.normal_(module.weight, mean=0.0, std=d_model**-0.5)
