"""distillery.evaluation"""
