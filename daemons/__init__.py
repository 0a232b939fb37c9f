"""What every vxflow daemon shares, below every other package (imports none of them)."""
