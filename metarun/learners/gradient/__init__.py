"""Meta-learners that learn an initialisation (MAML, first-order MAML, ANIL, Meta-SGD, MAML++,
Reptile), an optimiser (the LSTM meta-learner) or a parameter generator (HyperNetworks)."""
