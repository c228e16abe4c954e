import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["suite.test.mjs"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
})
