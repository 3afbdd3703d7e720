"""distillery.training"""
