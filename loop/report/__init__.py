"""What a run produced: the summary table, the HTML report, the model export."""
