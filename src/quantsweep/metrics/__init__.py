"""Detection decoding, mAP and output-error metrics shared by the sweep and the evaluation stages."""
