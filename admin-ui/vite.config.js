import { defineConfig } from "vite";

// Served by the api-service under /admin/, from assets built into its binary.
export default defineConfig({
  base: "/admin/",
  build: { outDir: "dist", emptyOutDir: true, chunkSizeWarningLimit: 1000 },
});
