"""Low-rank linear algebra: factored deltas, their inner products, bases and rank-1 SVDs. Imports nothing above it."""
