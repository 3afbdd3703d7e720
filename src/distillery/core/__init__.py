"""distillery.core"""
