"""LoLCATs: low-rank linearizing of a softmax-attention language model."""
