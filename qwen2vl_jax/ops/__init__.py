"""Pure functions with no weights: rotary tables, attention, vision-token scatter."""
