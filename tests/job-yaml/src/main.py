print("hello from code")
