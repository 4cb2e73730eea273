"""Model families (SD1, SD2, SDXL, SD3, FLUX): what differs between them, one module per family."""
