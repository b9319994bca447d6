/*
 * AP start-up trampoline.  Ring 3 copies the bytes between
 * ap_trampoline_start and ap_trampoline_end to TRAMPOLINE_ADDR (0x10000) and
 * stores CR3 in ap_trampoline_cr3; a SIPI with vector 0x10 starts the AP here
 * in real mode at CS:IP = 0x1000:0000.  Real mode -> 32-bit protected mode ->
 * long mode, then a jump to ap_long_mode_entry in the kernel image.
 * Every address is trampoline-relative plus TRAMPOLINE_ADDR.
 */
    .section .rodata.trampoline, "a"
    .set TBASE, {TRAMPOLINE_ADDR}
    .globl ap_trampoline_start
    .globl ap_trampoline_end
    .globl ap_trampoline_cr3

    .code16
ap_trampoline_start:
    cli
    cld
    mov     %cs, %ax
    mov     %ax, %ds
    lgdtl   (tramp_gdtr - ap_trampoline_start)
    mov     $0x11, %eax                         /* PE | ET */
    mov     %eax, %cr0
    ljmpl   $0x08, $(TBASE + tramp_pm32 - ap_trampoline_start)

    .code32
tramp_pm32:
    mov     $0x10, %ax
    mov     %ax, %ds
    mov     %ax, %es
    mov     %ax, %ss
    mov     $((1 << 5) | (1 << 9) | (1 << 10)), %eax   /* PAE | OSFXSR | OSXMMEXCPT */
    mov     %eax, %cr4
    mov     (TBASE + ap_trampoline_cr3 - ap_trampoline_start), %eax
    mov     %eax, %cr3
    mov     $0xc0000080, %ecx                   /* EFER.LME */
    rdmsr
    or      $0x100, %eax
    wrmsr
    mov     $0x80010033, %eax                   /* PG | WP | NE | ET | MP | PE */
    mov     %eax, %cr0
    ljmpl   $0x18, $(TBASE + tramp_lm64 - ap_trampoline_start)

    .code64
tramp_lm64:
    movabs  $ap_long_mode_entry, %rax
    jmp     *%rax

    .balign 8
tramp_gdt:
    .quad   0
    .quad   0x00cf9b000000ffff                  /* 0x08: 32-bit code */
    .quad   0x00cf93000000ffff                  /* 0x10: data */
    .quad   0x00af9b000000ffff                  /* 0x18: 64-bit code */
tramp_gdtr:
    .word   31
    .long   TBASE + tramp_gdt - ap_trampoline_start
ap_trampoline_cr3:
    .long   0
ap_trampoline_end:
    .code64
