"""K-FAC neuron pruning."""
