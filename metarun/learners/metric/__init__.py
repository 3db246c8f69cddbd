"""Metric learners: a query is scored against the support set by a distance or a learned relation
(ProtoNet, Matching, Relation, Siamese, Induction, BERT-PAIR), and ProtoNet's support-set tuning."""
