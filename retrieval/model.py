"""The traditional recommender (TRM) of DeepRec (docs/methods.md §4.2) as a torch module, on catalog *rows*.

Rows, not ids: row 0 is padding, rows 1..num_items are the catalog items in a fixed order (the id <-> row map
lives in `retrieval.retriever.TRMRetriever`, which is what callers use).

    item vector   e_i = IDEmbedding(i) + MoE(t_i)            t_i = the item's FROZEN text embedding (a buffer)
    history       x_p = e_{h_p} + PositionEmbedding(p)       the last `max_history` items, left-padded, so the
                                                             most recent item always sits at position L-1
    encoder       bidirectional Transformer (pre-norm, no causal mask, padding masked out)
    user vector   u = LayerNorm(h_{L-1} + MoE(text_embedding(preference)))   (the MoE term is 0 without one)
    scores        cos(u, e_i) for every catalog row; logits for training = cos / temperature

The same MoE adaptor maps item texts and preference texts (one text space -> one item space), which is what lets
a preference text written by the LLM move the user vector towards items described like it.

MoE adaptor: `num_experts` linear experts text_dim -> d and a softmax gate over them computed from the same text
embedding: MoE(t) = sum_e softmax(G t)_e (W_e t + b_e).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TRMConfig:
    """Sizes of a TRM. `num_items` excludes the padding row; `text_dim` is the frozen text encoder's width."""

    num_items: int
    text_dim: int
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    ffn_size: int = 256
    num_experts: int = 8
    max_history: int = 20
    dropout: float = 0.1
    temperature: float = 0.05  # logits = cosine / temperature (training only; retrieval ranks by the cosine)

    def __post_init__(self) -> None:
        for name in ("num_items", "text_dim", "hidden_size", "num_layers", "num_heads", "ffn_size", "num_experts",
                     "max_history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TRMConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"TRMConfig.hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"TRMConfig.dropout must be in [0, 1), got {self.dropout}")
        if not self.temperature > 0:
            raise ValueError(f"TRMConfig.temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "TRMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown TRM config field(s) {unknown}")
        return cls(**data)


class MoEAdaptor(nn.Module):
    """Text embedding (text_dim) -> item space (d): a softmax-gated mixture of `num_experts` linear experts."""

    def __init__(self, text_dim: int, hidden_size: int, num_experts: int):
        super().__init__()
        self.expert_weight = nn.Parameter(torch.empty(num_experts, text_dim, hidden_size))
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, hidden_size))
        self.gate = nn.Linear(text_dim, num_experts)
        # each expert initialised like an nn.Linear(text_dim, hidden_size)
        bound = 1.0 / text_dim ** 0.5
        nn.init.uniform_(self.expert_weight, -bound, bound)

    def gate_probs(self, text: torch.Tensor) -> torch.Tensor:
        """(..., num_experts) softmax gate; sums to 1 over the experts."""
        return torch.softmax(self.gate(text), dim=-1)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        gate = self.gate_probs(text)                                              # (N, E)
        experts = torch.einsum("nt,etd->ned", text, self.expert_weight) + self.expert_bias  # (N, E, d)
        return torch.einsum("ne,ned->nd", gate, experts)


class EncoderLayer(nn.Module):
    """A pre-norm Transformer encoder layer (self-attention, then a GELU feed-forward; no causal mask).

    Written out, instead of `nn.TransformerEncoderLayer`, for one reason: retrieval needs only the last
    position's output, so the LAST layer can compute queries, attention output and feed-forward for that position
    alone (`last_only=True`; keys and values still come from every position). That is ~40% of the encoder's work
    saved per query and gives the same numbers (tests/test_trm.py checks it against `nn.TransformerEncoderLayer`)."""

    def __init__(self, hidden_size: int, num_heads: int, ffn_size: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attn_out = nn.Linear(hidden_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn_in = nn.Linear(hidden_size, ffn_size)
        self.ffn_out = nn.Linear(ffn_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, key_padding: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x (B, L, d), key_padding (B, L) True = padding -> (B, L, d), or (B, 1, d) with `last_only`."""
        B, L, d = x.shape
        H = self.num_heads
        h = self.attn_norm(x)
        w_q, w_kv = self.qkv.weight[:d], self.qkv.weight[d:]
        b_q, b_kv = self.qkv.bias[:d], self.qkv.bias[d:]
        k, v = F.linear(h, w_kv, b_kv).view(B, L, 2, H, d // H).permute(2, 0, 3, 1, 4)
        if last_only:
            x, h = x[:, -1:], h[:, -1:]
        q = F.linear(h, w_q, b_q).view(B, -1, H, d // H).transpose(1, 2)
        allowed = (~key_padding)[:, None, None, :]  # (B, 1, 1, L): attend to real items only
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.dropout(self.attn_out(a.transpose(1, 2).reshape(B, -1, d)))
        return x + self.dropout(self.ffn_out(self.dropout(F.gelu(self.ffn_in(self.ffn_norm(x))))))


class TRM(nn.Module):
    """See the module docstring. `item_text` is (num_items + 1, text_dim), row 0 = zeros (padding)."""

    def __init__(self, config: TRMConfig, item_text: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        c = config
        self.id_embedding = nn.Embedding(c.num_items + 1, c.hidden_size, padding_idx=0)
        nn.init.normal_(self.id_embedding.weight, std=0.02)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()
        if item_text is None:
            item_text = torch.zeros(c.num_items + 1, c.text_dim)
        if tuple(item_text.shape) != (c.num_items + 1, c.text_dim):
            raise ValueError(f"item_text has shape {tuple(item_text.shape)}, expected "
                             f"({c.num_items + 1}, {c.text_dim}) (row 0 = padding)")
        # frozen: a buffer, never a parameter, so no optimiser can move it
        self.register_buffer("item_text", item_text.detach().to(torch.float32).clone())
        self.adaptor = MoEAdaptor(c.text_dim, c.hidden_size, c.num_experts)
        self.position_embedding = nn.Embedding(c.max_history, c.hidden_size)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.input_dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(EncoderLayer(c.hidden_size, c.num_heads, c.ffn_size, c.dropout)
                                    for _ in range(c.num_layers))
        self.final_norm = nn.LayerNorm(c.hidden_size)
        self.user_norm = nn.LayerNorm(c.hidden_size)

    # ------------------------------------------------------------------------------------------ items
    def item_vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """e = IDEmbedding + MoE(frozen text) for `rows` (default: every row, padding row 0 included)."""
        if rows is None:
            return self.id_embedding.weight + self.adaptor(self.item_text)
        flat = rows.reshape(-1)
        vec = self.id_embedding(flat) + self.adaptor(self.item_text[flat])
        return vec.reshape(*rows.shape, -1)

    # ------------------------------------------------------------------------------------------ users
    def history_state(self, history_rows: torch.Tensor, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """h_{L-1}: the encoder's output at the most recent item. `history_rows` (B, L<=max_history), left-padded
        with 0. A row with no history gets zeros (its user vector is then the preference term alone)."""
        if history_rows.dim() != 2 or history_rows.shape[1] > self.config.max_history:
            raise ValueError(f"history_rows must be (B, L <= {self.config.max_history}), got "
                             f"{tuple(history_rows.shape)}")
        B, L = history_rows.shape
        if item_vectors is None:
            x = self.item_vectors(history_rows)
        else:
            x = item_vectors[history_rows]
        x = x * (history_rows != 0).unsqueeze(-1)  # padding contributes nothing (row 0's MoE bias is not zero)
        positions = torch.arange(self.config.max_history - L, self.config.max_history, device=history_rows.device)
        x = self.input_dropout(x + self.position_embedding(positions))
        padding = history_rows == 0
        empty = padding.all(dim=1)
        # an all-masked row would give NaN attention: let empty rows attend to their last slot, zero them below
        padding = padding.clone()
        padding[empty, -1] = False
        for i, layer in enumerate(self.layers):
            x = layer(x, padding, last_only=i == len(self.layers) - 1)
        h = self.final_norm(x[:, -1])
        return h * (~empty).unsqueeze(-1)

    def user_vectors(self, history_rows: torch.Tensor, preference_text: torch.Tensor | None = None,
                     has_preference: torch.Tensor | None = None,
                     item_vectors: torch.Tensor | None = None) -> torch.Tensor:
        """u = LayerNorm(h_last + MoE(preference_text)); rows with `has_preference` False (or no preference
        tensor at all) get no MoE term."""
        h = self.history_state(history_rows, item_vectors)
        if preference_text is not None:
            pref = self.adaptor(preference_text.to(h.dtype))
            if has_preference is not None:
                pref = pref * has_preference.to(h.dtype).unsqueeze(-1)
            h = h + pref
        return self.user_norm(h)

    # ------------------------------------------------------------------------------------------ scores
    @staticmethod
    def cosine(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, N) cosine between user vectors (B, d) and item vectors (N, d)."""
        return F.normalize(users, dim=-1) @ F.normalize(items, dim=-1).T
